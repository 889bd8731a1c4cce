//! playlist YAML text → playlist or one diagnostic: never a panic.
#![no_main]

use std::path::Path;

use backline::library::parse_playlist;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(error) = parse_playlist(Path::new("/nonexistent/playlist.yaml"), text) {
        assert!(!error.message.is_empty());
    }
});
