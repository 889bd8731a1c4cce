//! Audio file bytes → header facts and every packet decoded (bounded by the 4-hour limit):
//! a damaged or hostile file is an error naming it, never a panic or a hang.
#![no_main]

use std::path::Path;

use backline::media::{decode_to_end, FileDecoder};
use libfuzzer_sys::fuzz_target;

/// libFuzzer's panic hook aborts on every panic, even a caught one. backline catches the
/// decoder's panics on purpose (symphonia asserts on some impossible headers) and turns
/// them into an error naming the file, so only a panic outside that guard is a finding.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let libfuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !backline::media::inside_guard() {
                libfuzzer_hook(info);
            }
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    install_panic_hook();
    // The first byte picks the name's extension (the format hint symphonia gets).
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let ext = ["wav", "flac", "mp3", "ogg", "m4a", "aiff"][usize::from(pick) % 6];
    let name = Path::new("/fuzz").with_extension(ext);
    match FileDecoder::from_bytes(&name, bytes.to_vec()) {
        Ok(decoder) => {
            let _ = decode_to_end(&name, decoder);
        }
        Err(error) => assert!(!error.message.is_empty()),
    }
});
