//! MIDI: the beat clock and MIDI-file playback on their own real-time thread, locked to the
//! audio clock, and the outputs they write to.

pub mod clock;
pub mod file;
pub mod jack;
pub mod output;
pub mod port;
pub mod standby;

pub use clock::{ClockCommand, ClockSettings, ClockSong, ClockThread};
pub use file::{load_schedule, MidiSchedule};
pub use output::{OutputSlot, Outputs};
pub use port::{list_ports, start_control, ControlAction};
