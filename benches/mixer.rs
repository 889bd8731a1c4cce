//! Mixer cost per 512-frame buffer at 48 kHz, in the scenarios other players are compared
//! on. Each iteration refills the stems' rings (untimed) and times one `render` call.
//! Target: every scenario under 10 µs on a 2-core machine.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backline::engine::mixer::{db_to_gain, routes_for, PlanarBuffer, SongMixer, StemMix};
use backline::media::StemStream;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

const FRAMES: usize = 512;

struct Scenario {
    name: &'static str,
    sources: usize,
    channels: usize,
    outputs: usize,
}

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "8_stereo_sources_16ch_out",
        sources: 8,
        channels: 2,
        outputs: 16,
    },
    Scenario {
        name: "1_source_16ch_16ch_out",
        sources: 1,
        channels: 16,
        outputs: 16,
    },
    Scenario {
        name: "32_mono_sources_32ch_out",
        sources: 32,
        channels: 1,
        outputs: 32,
    },
];

#[derive(Clone, Copy)]
enum Gains {
    Unity,
    Constant,
    Ramp,
}

fn build(s: &Scenario, gains: Gains) -> (SongMixer, Vec<rtrb::Producer<f32>>) {
    let mut producers = Vec::new();
    let stems = (0..s.sources)
        .map(|index| {
            let (producer, consumer) = rtrb::RingBuffer::new(FRAMES * s.channels * 2);
            producers.push(producer);
            let outputs: Vec<usize> = (0..s.channels)
                .map(|c| (index * s.channels + c) % s.outputs)
                .collect();
            let gain = match gains {
                Gains::Unity => 1.0,
                Gains::Constant | Gains::Ramp => db_to_gain(-6.0),
            };
            StemMix::new(
                StemStream {
                    name: format!("stem{index}"),
                    ring: consumer,
                    channels: s.channels,
                    finished: Arc::new(AtomicBool::new(false)),
                },
                routes_for(s.channels, &outputs),
                gain,
            )
        })
        .collect();
    (SongMixer::new(stems), producers)
}

fn refill(producers: &mut [rtrb::Producer<f32>], samples: &[f32]) {
    for producer in producers {
        let want = producer.slots().min(samples.len());
        if let Ok(chunk) = producer.write_chunk_uninit(want) {
            chunk.fill_from_iter(samples.iter().copied());
        }
    }
}

fn mixer(c: &mut Criterion) {
    let mut group = c.benchmark_group("mixer");
    for scenario in &SCENARIOS {
        for (suffix, gains) in [
            ("", Gains::Unity),
            ("_gains", Gains::Constant),
            ("_ramp", Gains::Ramp),
        ] {
            let (mut song, mut producers) = build(scenario, gains);
            let samples: Vec<f32> = (0..FRAMES * scenario.channels)
                .map(|n| ((n * 7919) % 2000) as f32 / 1000.0 - 1.0)
                .collect();
            let mut planar = PlanarBuffer::new(scenario.outputs);
            let mut output = vec![0.0f32; FRAMES * scenario.outputs];
            let id = BenchmarkId::from_parameter(format!("{}{suffix}", scenario.name));
            group.bench_function(id, |b| {
                b.iter_custom(|iterations| {
                    let mut total = Duration::ZERO;
                    for i in 0..iterations {
                        refill(&mut producers, &samples);
                        if let Gains::Ramp = gains {
                            // A new target every buffer: the ramp runs during the whole buffer.
                            let target = if i % 2 == 0 {
                                db_to_gain(-12.0)
                            } else {
                                db_to_gain(-6.0)
                            };
                            for stem in &mut song.stems {
                                stem.gain.set_target(target);
                            }
                        }
                        // Timed: clearing, mixing and interleaving to the device buffer,
                        // as the audio callback does.
                        let start = Instant::now();
                        planar.clear(FRAMES);
                        let rendered = song.render(&mut planar, 0, FRAMES);
                        planar.interleave_f32(FRAMES, &mut output);
                        total += start.elapsed();
                        std::hint::black_box(rendered);
                    }
                    total
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, mixer);
criterion_main!(benches);
