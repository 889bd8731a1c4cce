//! backline: a real-time backing-track player for live shows.
//!
//! Modules follow DESIGN.md, one concern each: `library` (files → validated model),
//! `media` (decode, resample, prefetch), `engine` (transport, mixer, outputs), `timing`
//! (tempo maps), `rt` (real-time scheduling), `sandbox` (capabilities, no_new_privs, Landlock,
//! seccomp), `service` (sd_notify, signals, control socket), `stats` (measurements).

pub mod cli;
pub mod engine;
pub mod library;
pub mod media;
pub mod midi;
pub mod rt;
pub mod sandbox;
pub mod service;
pub mod stats;
pub mod timing;
