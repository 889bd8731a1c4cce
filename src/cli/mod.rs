//! The command-line front-end: the `play`, `check`, `devices` and `unit` commands, the terminal UI
//! and log setup. `main.rs` only parses arguments and calls in here.

pub mod check;
pub mod clock_only;
pub mod console;
pub mod logging;
pub mod play;
pub mod plot;
pub mod report;
pub mod sandbox;
pub mod unit;
