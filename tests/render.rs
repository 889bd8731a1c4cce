//! The real-time WAV render: what the player writes is exactly what the files hold (no
//! resampling, unity gain), songs follow each other sample-exactly, and the file ends where
//! the set ends.

mod common;

use std::process::{Command, Stdio};

use common::fixtures::{read_f32_wav, TestShow};

/// Deterministic pseudo-random 16-bit samples.
fn noise(seed: u32, frames: usize) -> Vec<i16> {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    (0..frames)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 16) as i16
        })
        .collect()
}

fn as_f32(samples: &[i16]) -> Vec<f32> {
    samples.iter().map(|&s| f32::from(s) / 32768.0).collect()
}

#[test]
fn wav_render_is_bit_exact_and_gapless() {
    let show = TestShow::new("render");
    let rate = 48_000;
    let a = noise(1, 62_500);
    let (b_left, b_right) = (noise(2, 40_000), noise(3, 40_000));
    let c = noise(4, 30_000);
    let next = noise(5, 10_000);
    show.wav_i16("songs/first/a.wav", rate, std::slice::from_ref(&a));
    show.wav_i16(
        "songs/first/b.wav",
        rate,
        &[b_left.clone(), b_right.clone()],
    );
    show.wav_i16("songs/first/c.wav", rate, std::slice::from_ref(&c));
    show.song(
        "first",
        "First",
        &[
            ("a", "a.wav", None),
            ("b", "b.wav", None),
            ("c", "c.wav", None),
        ],
    );
    show.wav_i16("songs/second/n.wav", rate, std::slice::from_ref(&next));
    show.song("second", "Second", &[("a", "n.wav", None)]);
    show.write(
        "backline.yaml",
        "songs: songs\naudio:\n  sample_rate: 48000\n  buffer_size: 256\n  track_mappings:\n    a: [1]\n    b: [2, 3]\n    c: [3]\n",
    );
    let out = show.path("out.wav");
    let result = Command::new(env!("CARGO_BIN_EXE_backline"))
        .arg("play")
        .arg(&show.root)
        .arg("--output")
        .arg(format!("wav:{}", out.display()))
        .args(["--speed", "10"])
        .stdin(Stdio::null())
        .output()
        .expect("run backline");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");

    let (got_rate, channels) = read_f32_wav(&out);
    assert_eq!(got_rate, rate);
    assert_eq!(channels.len(), 3);
    // The first song lasts as long as its longest track; the second follows at once.
    let first_len = a.len();
    assert_eq!(
        channels[0].len(),
        first_len + next.len(),
        "the file ends exactly where the set ends"
    );

    let mut expected = vec![vec![0.0f32; first_len + next.len()]; 3];
    expected[0][..a.len()].copy_from_slice(&as_f32(&a));
    expected[1][..b_left.len()].copy_from_slice(&as_f32(&b_left));
    for (i, (r, c)) in as_f32(&b_right)
        .iter()
        .zip(as_f32(&c).iter().chain(std::iter::repeat(&0.0)))
        .enumerate()
    {
        expected[2][i] = r + c;
    }
    expected[0][first_len..].copy_from_slice(&as_f32(&next));
    for (channel, (got, want)) in channels.iter().zip(&expected).enumerate() {
        let first_difference = got
            .iter()
            .zip(want)
            .position(|(g, w)| g.to_bits() != w.to_bits());
        assert_eq!(
            first_difference,
            None,
            "output {} differs from the source samples",
            channel + 1
        );
    }
}
