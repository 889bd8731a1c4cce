//! backline.yaml text → config or diagnostics: never a panic.
#![no_main]

use std::path::Path;

use backline::library::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = Config::parse(Path::new("/nonexistent/backline.yaml"), text) {
        assert!(errors.iter().all(|e| !e.message.is_empty()));
    }
});
