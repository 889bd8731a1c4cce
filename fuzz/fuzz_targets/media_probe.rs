//! Audio file bytes → header facts and every packet decoded (bounded by the 4-hour limit):
//! a damaged or hostile file is an error naming it, never a panic or a hang.
#![no_main]

use std::path::Path;

use backline::media::{decode_to_end, FileDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
