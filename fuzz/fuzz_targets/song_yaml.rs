//! song.yaml text → validated song or diagnostics: never a panic, always a message.
#![no_main]

use std::path::Path;

use backline::library::{parse_song, RootPolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let root = Path::new("/nonexistent/library");
    let policy = RootPolicy::new(root, &[]);
    let parsed = parse_song(&root.join("song/song.yaml"), text, &policy);
    for error in &parsed.errors {
        assert!(!error.message.is_empty());
    }
});
