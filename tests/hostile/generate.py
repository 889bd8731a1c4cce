#!/usr/bin/env python3
"""Regenerate the hostile-input corpus: one song directory per broken input.

    python3 tests/hostile/generate.py        (from any directory)

Standard library only; the truncated FLAC and MP3 are cut from the committed format
fixtures in tests/fixtures/formats. Deterministic: running it again rewrites the same bytes.

Layout (relative to this script):

  library/backline.yaml        WAV render, routes `main` to outputs 1-2
  library/songs/<case>/        one song per case; `good-*` songs are valid and must play
  expected.tsv                 case <TAB> where (check|play) <TAB> text the error must contain

Inputs too large to commit (a 10 GB sparse WAV, a 50 MB song.yaml, a MIDI file with a
million events) are made by tests/hostile.rs at test time, with the same helpers'
shapes as here; their expectations live in that test.
"""

import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
LIB = os.path.join(HERE, "library")
SONGS = os.path.join(LIB, "songs")
FIXTURES = os.path.join(HERE, "..", "fixtures", "formats")

EXPECTED = []


def expect(case, text):
    EXPECTED.append((case, text))


def song_dir(case):
    path = os.path.join(SONGS, case)
    os.makedirs(path, exist_ok=True)
    return path


def write(path, data):
    mode = "wb" if isinstance(data, (bytes, bytearray)) else "w"
    with open(path, mode) as f:
        f.write(data)


def song_yaml(case, file="audio.wav", extra=""):
    return (
        f"kind: song\nname: {case}\ntracks:\n  - name: main\n    file: {file}\n{extra}"
    )


def wav_bytes(frames, channels=2, rate=48000, bits=16, data_size=None, tone=True):
    """A PCM WAV; `data_size` overrides what the header claims."""
    block = channels * bits // 8
    data = bytearray()
    for i in range(frames):
        value = int(8000 * ((i // 24) % 2 * 2 - 1)) if tone else 0
        for _ in range(channels):
            if bits == 8:
                data.append(128 + value // 256)
            else:
                data += struct.pack("<h", value)
    claimed = len(data) if data_size is None else data_size
    header = b"RIFF" + struct.pack("<I", (36 + claimed) & 0xFFFFFFFF) + b"WAVE"
    header += b"fmt " + struct.pack(
        "<IHHIIHH", 16, 1, channels, rate, rate * block, block, bits
    )
    header += b"data" + struct.pack("<I", claimed & 0xFFFFFFFF)
    return bytes(header + data)


def smf(tracks, division=480, fmt=1):
    """A Standard MIDI File from raw track bodies (bytes, without end-of-track added)."""
    out = b"MThd" + struct.pack(">IHHH", 6, fmt, len(tracks), division)
    for body in tracks:
        out += b"MTrk" + struct.pack(">I", len(body)) + body
    return out


END_OF_TRACK = b"\x00\xff\x2f\x00"


def tempo_event(us_per_quarter):
    return b"\x00\xff\x51\x03" + us_per_quarter.to_bytes(3, "big")


def notes(count, channel=0):
    body = b""
    for i in range(count):
        body += bytes([0x00, 0x90 | channel, 60 + i % 12, 100])
        body += bytes([0x60, 0x80 | channel, 60 + i % 12, 0])
    return body


def midi_song(case, midi_bytes):
    d = song_dir(case)
    write(os.path.join(d, "song.mid"), midi_bytes)
    write(os.path.join(d, "audio.wav"), wav_bytes(4800))
    write(
        os.path.join(d, "song.yaml"),
        song_yaml(case, extra="midi_playback:\n  file: song.mid\n"),
    )


def main():
    shutil.rmtree(LIB, ignore_errors=True)
    os.makedirs(SONGS)
    write(
        os.path.join(LIB, "backline.yaml"),
        "# The hostile corpus as a show: every broken song is skipped, the good ones play.\n"
        "songs: songs\n"
        "audio:\n"
        "  device: \"wav:out.wav\"\n"
        "  sample_rate: 48000\n"
        "  buffer_size: 256\n"
        "  track_mappings:\n"
        "    main: [1, 2]\n"
        "    left: [1]\n"
        "    right: [2]\n",
    )

    # Two valid songs, first and last in name order, so the set starts and ends playing.
    for case in ["aaa-good-first", "zzz-good-last"]:
        d = song_dir(case)
        write(os.path.join(d, "audio.wav"), wav_bytes(24000))
        write(os.path.join(d, "song.yaml"), song_yaml(case))

    # ---- audio ----
    d = song_dir("audio-zero-length")
    write(os.path.join(d, "audio.wav"), b"")
    write(os.path.join(d, "song.yaml"), song_yaml("audio-zero-length"))
    expect("audio-zero-length", "audio.wav: the file is empty")

    with open(os.path.join(FIXTURES, "tone.flac"), "rb") as f:
        flac = f.read()
    d = song_dir("audio-truncated-flac")
    write(os.path.join(d, "audio.flac"), flac[:60])
    write(os.path.join(d, "song.yaml"), song_yaml("audio-truncated-flac", "audio.flac"))
    expect("audio-truncated-flac", "audio.flac: the file ends early (truncated)")

    with open(os.path.join(FIXTURES, "tone.mp3"), "rb") as f:
        mp3 = f.read()
    d = song_dir("audio-truncated-mp3")
    write(os.path.join(d, "audio.mp3"), mp3[:3])
    write(os.path.join(d, "song.yaml"), song_yaml("audio-truncated-mp3", "audio.mp3"))
    expect("audio-truncated-mp3", "audio.mp3: the file ends early (truncated)")

    d = song_dir("audio-truncated-wav")
    write(os.path.join(d, "audio.wav"), wav_bytes(4800)[:30])
    write(os.path.join(d, "song.yaml"), song_yaml("audio-truncated-wav"))
    expect("audio-truncated-wav", "audio.wav: the file ends early (truncated)")

    # A text file with an audio extension.
    d = song_dir("audio-wrong-extension")
    write(os.path.join(d, "audio.flac"), "this is a set list, not a FLAC file\n" * 20)
    write(os.path.join(d, "song.yaml"), song_yaml("audio-wrong-extension", "audio.flac"))
    expect("audio-wrong-extension", "audio.flac: unsupported format")

    # A valid MP3 named .wav plays: formats are recognised by content, not by name.
    d = song_dir("good-mp3-named-wav")
    write(os.path.join(d, "audio.wav"), mp3)
    write(os.path.join(d, "song.yaml"), song_yaml("good-mp3-named-wav"))

    d = song_dir("audio-claims-2g-frames")
    write(
        os.path.join(d, "audio.wav"),
        wav_bytes(480, channels=1, bits=8, data_size=1 << 31),
    )
    write(os.path.join(d, "song.yaml"), song_yaml("audio-claims-2g-frames"))
    expect("audio-claims-2g-frames", "audio.wav: the header claims 2147483648 frames")

    d = song_dir("audio-zero-channels")
    write(os.path.join(d, "audio.wav"), wav_bytes(480, channels=0))
    write(os.path.join(d, "song.yaml"), song_yaml("audio-zero-channels"))
    expect("audio-zero-channels", "audio.wav: unsupported channel count")

    d = song_dir("audio-zero-rate")
    write(os.path.join(d, "audio.wav"), wav_bytes(480, rate=0))
    write(os.path.join(d, "song.yaml"), song_yaml("audio-zero-rate"))
    expect("audio-zero-rate", "audio.wav: cannot decode: the decoder gave up on this file")

    # Many channels, two of them routed. 26 (symphonia's most) is valid and plays, decoded
    # one packet at a time; 64 is refused with the limit in the message.
    for channels, case in [(26, "good-26-channels"), (64, "audio-64-channels")]:
        d = song_dir(case)
        write(os.path.join(d, "audio.wav"), wav_bytes(4800, channels=channels))
        write(
            os.path.join(d, "song.yaml"),
            f"kind: song\nname: {case}\ntracks:\n"
            "  - name: left\n    file: audio.wav\n    file_channel: 1\n"
            f"  - name: right\n    file: audio.wav\n    file_channel: {channels}\n",
        )
    expect("audio-64-channels", "expected 1 to 26 channels")

    # ---- MIDI ----
    good_track = tempo_event(500000) + notes(4) + END_OF_TRACK
    truncated = smf([good_track])
    midi_song("midi-truncated-chunk", truncated[: len(truncated) - 20])
    expect("midi-truncated-chunk", "song.mid: the file is truncated")

    # Running status with no status byte ever sent, then running status after a meta event.
    abuse = b"\x00\x3c\x64" + b"\x00\xff\x01\x01x" + b"\x60\x3c\x00" + END_OF_TRACK
    midi_song("midi-running-status-abuse", smf([abuse]))
    expect("midi-running-status-abuse", "where a status byte was expected (no running status")

    midi_song("midi-tempo-zero", smf([tempo_event(0) + notes(2) + END_OF_TRACK]))
    expect("midi-tempo-zero", "tempo of 0 µs per quarter note")
    midi_song("midi-tempo-one", smf([tempo_event(1) + notes(2) + END_OF_TRACK]))
    expect("midi-tempo-one", "tempo of 1 µs per quarter note")

    # ---- YAML ----
    # "Billion laughs" under `lighting`, a key mtrack knows and backline reads as free-form
    # YAML: expanding it would build 9^9 strings.
    bomb = "kind: song\nname: yaml-alias-bomb\nlighting:\n"
    bomb += '  a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, 10):
        refs = ",".join([f"*a{i-1}"] * 9)
        bomb += f"  a{i}: &a{i} [{refs}]\n"
    bomb += "tracks:\n  - name: main\n    file: audio.wav\n"
    d = song_dir("yaml-alias-bomb")
    write(os.path.join(d, "audio.wav"), wav_bytes(480))
    write(os.path.join(d, "song.yaml"), bomb)
    expect("yaml-alias-bomb", "song.yaml: aliases expand to too much data (an alias bomb?)")

    d = song_dir("yaml-deep-nesting")
    write(os.path.join(d, "audio.wav"), wav_bytes(480))
    write(
        os.path.join(d, "song.yaml"),
        "kind: song\nname: yaml-deep-nesting\nlighting: " + "[" * 10000 + "]" * 10000 + "\n",
    )
    expect("yaml-deep-nesting", "song.yaml:3:138: nested too deeply")

    d = song_dir("yaml-invalid-utf8")
    write(os.path.join(d, "audio.wav"), wav_bytes(480))
    write(
        os.path.join(d, "song.yaml"),
        b"kind: song\nname: caf\xe9 \xff\xfe\ntracks:\n  - name: main\n    file: audio.wav\n",
    )
    expect("yaml-invalid-utf8", "song.yaml:2:10: invalid UTF-8")

    d = song_dir("yaml-duplicate-keys")
    write(os.path.join(d, "audio.wav"), wav_bytes(480))
    write(
        os.path.join(d, "song.yaml"),
        "kind: song\nname: yaml-duplicate-keys\nname: again\ntracks:\n  - name: main\n    file: audio.wav\n",
    )
    expect("yaml-duplicate-keys", "song.yaml:3:1: duplicate field `name`")

    d = song_dir("yaml-path-escape")
    write(
        os.path.join(d, "song.yaml"),
        song_yaml("yaml-path-escape", "../../../../../../../../etc/passwd"),
    )
    expect("yaml-path-escape", "song.yaml:5:11: `../../../../../../../../etc/passwd` resolves to /etc/passwd which is outside the library")

    # A directory symlink pointing at its own parent: the scan must not loop.
    d = song_dir("yaml-symlink-loop")
    os.symlink("..", os.path.join(d, "loop"))
    write(os.path.join(d, "audio.wav"), wav_bytes(480))
    write(os.path.join(d, "song.yaml"), song_yaml("yaml-symlink-loop"))
    expect("yaml-symlink-loop", "yaml-symlink-loop/loop: symlink loop")

    # A playlist whose song list ends in an alias bomb: only that playlist fails.
    playlist = "kind: playlist\nsongs:\n  - aaa-good-first\n"
    playlist += '  - &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, 10):
        refs = ",".join([f"*a{i-1}"] * 9)
        playlist += f"  - &a{i} [{refs}]\n"
    d = song_dir("yaml-playlist-bomb")
    write(os.path.join(d, "bomb.yaml"), playlist)
    expect("yaml-playlist-bomb", "bomb.yaml:4:5: songs[1]: invalid type: sequence")

    with open(os.path.join(HERE, "expected.tsv"), "w") as f:
        f.write("# case\ttext the error must contain (see generate.py)\n")
        for case, text in EXPECTED:
            f.write(f"{case}\t{text}\n")


if __name__ == "__main__":
    main()
