//! The engine: transport state machine, routing and gains, the mixer callback, and the
//! output backends (cpal devices, native JACK and the real-time WAV render).

pub mod callback;
pub mod handover;
pub mod jack_output;
pub mod mixer;
pub mod output;
pub mod player;
pub mod reconnect;
pub mod render;
pub mod transport;

pub use callback::{AudioCallback, FirstCallbackHook};
pub use player::{Player, Reload, Request, RunSummary, SongObserver, StatusSink, StatusSnapshot};
pub use transport::{transport, Command, Event, PreparedSong, SharedStatus, TransportControl};
