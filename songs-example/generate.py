#!/usr/bin/env python3
"""Regenerate every audio and MIDI file of the backline example show.

    python3 songs-example/generate.py        (from any directory)

Uses only the Python standard library plus the command-line encoders
`flac`, `oggenc` (vorbis-tools) and `lame`. The output is deterministic:
the only randomness comes from a seeded generator, and the Ogg stream gets a
fixed serial number. Running it again overwrites the files in place.

Files written (relative to this script):

  songs/01-sound-check/backing.flac  stereo: pad left, bass right
  songs/01-sound-check/click.wav     120 BPM, accented downbeats
  songs/02-tempo-change/click.flac    follows the tempo map below exactly
  songs/02-tempo-change/bass.ogg     mono bass line on the same tempo map
  songs/03-with-midi/song.mid        SMF type 1: conductor, drums (ch 10), bass (ch 1)
  songs/03-with-midi/pad.mp3         stereo pad, 128 kbit/s CBR
  songs/03-with-midi/click.flac       110 BPM (the MIDI file's tempo)

All audio is 48 kHz. WAVs and the FLAC input are 16-bit integer PCM.
Levels: clicks peak at -6 dBFS (accent) / -10 dBFS (other beats); every
musical part (backing channels, bass, pad) peaks at -13 dBFS or below, so
bass + pad + backing could all sum on outputs 1-2 without clipping.

Tempo map of "Tempo Change" (song 2) -- the click and the bass follow it:

  bpm 100, 4/4, start 0.5 s; change at measure 5 to 140 bpm with
  transition { measures: 2 }.

  b = beat position in quarter notes since measure 1 beat 1 (b = 0).
  Measure m, beat k (both 1-based) is b = 4*(m-1) + (k-1).

  * lead-in:   t(0) = 0.5 s
  * b <= 16:   t(b) = 0.5 + b * 60/100                      (measures 1-4)
  * 16 <= b <= 24 (measures 5-6, the ramp): the tempo is linear in beat
    position (not in time):
                 bpm(b) = 100 + (140 - 100) * (b - 16) / 8
    and time is the integral of 60/bpm(b) db:
                 t(b) = t(16) + (60 * 8 / (140 - 100)) * ln(bpm(b) / 100)
                      = 10.1 + 12 * ln(1 + (b - 16) / 20)
  * b >= 24:   t(b) = t(24) + (b - 24) * 60/140              (measure 7 on)
               with t(24) = 10.1 + 12 * ln(1.4) = 14.137667 s

  In general, a ramp from B0 to B1 over N beats starting at beat b0, time t0:
      bpm(b) = B0 + (B1 - B0) * (b - b0) / N
      t(b)   = t0 + 60 * N / (B1 - B0) * ln(bpm(b) / B0)      (B1 != B0)
  The ramp spans exactly N = measures * beats_per_measure beats, so the
  downbeat of measure 7 is where the tempo arrives at 140.
  Clicks sit at round(t(b) * 48000) samples.
"""

import array
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import wave

HERE = os.path.dirname(os.path.abspath(__file__))
SONGS = os.path.join(HERE, "songs")
SR = 48000
RNG = random.Random(20240601)


def db(x):
    return 10.0 ** (x / 20.0)


def midi_hz(note):
    return 440.0 * 2.0 ** ((note - 69) / 12.0)


# ---------------------------------------------------------------- synthesis

TABLE_SIZE = 4096


def make_table(harmonics):
    """Single-cycle wavetable from [(harmonic, amplitude)], peak-normalised."""
    t = [0.0] * (TABLE_SIZE + 1)
    for i in range(TABLE_SIZE):
        ph = 2.0 * math.pi * i / TABLE_SIZE
        t[i] = sum(a * math.sin(h * ph) for h, a in harmonics)
    peak = max(abs(v) for v in t)
    t = [v / peak for v in t]
    t[TABLE_SIZE] = t[0]
    return t


# Soft, band-limited saw for pads (harmonics fall off faster than 1/n, so it
# sounds filtered). 20 harmonics of a note below 600 Hz stay under 12 kHz.
PAD_TABLE = make_table([(n, 1.0 / n ** 1.6) for n in range(1, 21)])
# Round bass: fundamental plus a little 2nd/3rd/4th harmonic.
BASS_TABLE = make_table([(1, 1.0), (2, 0.35), (3, 0.15), (4, 0.06)])


def render_voice(buf, table, freq, start, length, amp, attack, release,
                 decay=None, sustain=1.0, phase=0.0):
    """Add one oscillator note into buf (list of floats).

    start/length in seconds; the note sounds for `length` then releases over
    `release` seconds. Envelope: linear attack, then (if decay is given) an
    exponential fall towards `sustain` with time constant `decay`, then a
    linear release to zero. Everything is cut at the end of buf.
    """
    s0 = int(round(start * SR))
    n_on = int(round(length * SR))
    n_att = max(1, int(attack * SR))
    n_rel = max(1, int(release * SR))
    n_total = min(n_on + n_rel, len(buf) - s0)
    inc = freq * TABLE_SIZE / SR
    pos = phase * TABLE_SIZE
    k_dec = math.exp(-1.0 / (decay * SR)) if decay else 1.0
    dec = 1.0  # the part of the envelope that decays towards `sustain`
    env = 0.0
    held = 0.0  # envelope level when the release starts
    for i in range(n_total):
        if i < n_on:
            if i < n_att:
                env = i / n_att
            else:
                dec *= k_dec
                env = sustain + (1.0 - sustain) * dec
            held = env
        else:
            env = held * (1.0 - (i - n_on) / n_rel)
        ip = int(pos)
        fr = pos - ip
        v = table[ip] + (table[ip + 1] - table[ip]) * fr
        buf[s0 + i] += amp * env * v
        pos += inc
        if pos >= TABLE_SIZE:
            pos -= TABLE_SIZE


def render_click(buf, t, accent):
    """Short sine blip: 0.5 ms attack, 6 ms exponential decay, 35 ms long."""
    freq = 2000.0 if accent else 1300.0
    peak = db(-6.0) if accent else db(-10.0)
    s0 = int(round(t * SR))
    n = int(0.035 * SR)
    n_att = int(0.0005 * SR)
    for i in range(min(n, len(buf) - s0)):
        env = i / n_att if i < n_att else math.exp(-(i - n_att) / (0.006 * SR))
        tail = 1.0 - i / n  # reaches exactly zero at the end of the blip
        buf[s0 + i] += peak * env * tail * math.sin(2.0 * math.pi * freq * i / SR)


def silence(seconds):
    return [0.0] * int(round(seconds * SR))


def normalize(buf, peak_db):
    peak = max(abs(v) for v in buf) or 1.0
    g = db(peak_db) / peak
    return [v * g for v in buf]


def fade(buf, fade_in=0.005, fade_out=0.05):
    """Raised-cosine fades at the very start and end of a file."""
    n_in = int(fade_in * SR)
    n_out = int(fade_out * SR)
    for i in range(n_in):
        buf[i] *= 0.5 - 0.5 * math.cos(math.pi * i / n_in)
    n = len(buf)
    for i in range(n_out):
        buf[n - 1 - i] *= 0.5 - 0.5 * math.cos(math.pi * i / n_out)
    return buf


# ------------------------------------------------------------------- output

def write_wav(path, channels):
    """channels: list of equally long float lists in [-1, 1] -> 16-bit PCM."""
    n = len(channels[0])
    assert all(len(c) == n for c in channels)
    data = array.array("h", bytes(2 * n * len(channels)))
    nch = len(channels)
    for c, samples in enumerate(channels):
        for i, v in enumerate(samples):
            q = int(round(v * 32767.0))
            if q > 32767 or q < -32768:
                raise ValueError("%s: sample %d clips" % (path, i))
            data[i * nch + c] = q
    if sys.byteorder != "little":
        data.byteswap()
    with wave.open(path, "wb") as w:
        w.setnchannels(nch)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(data.tobytes())


def run(cmd):
    subprocess.run(cmd, check=True)


def encode_flac(channels, out):
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "in.wav")
        write_wav(src, channels)
        run(["flac", "--silent", "--force", "--best", "--no-padding", "-o", out, src])


def encode_ogg(channels, out):
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "in.wav")
        write_wav(src, channels)
        run(["oggenc", "--quiet", "-q", "4", "--serial", "48000", "-o", out, src])


def encode_mp3(channels, out):
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "in.wav")
        write_wav(src, channels)
        run(["lame", "--quiet", "--noreplaygain", "-b", "128", "--cbr", "-m", "s",
             "--resample", "48", src, out])


def song_dir(name):
    d = os.path.join(SONGS, name)
    os.makedirs(d, exist_ok=True)
    return d


def say(path):
    print("wrote", os.path.relpath(path, HERE))


# ------------------------------------------------------------ 1: Sound Check

def sound_check():
    """120 BPM, 4/4, four bars (8.0 s). Pad left, bass right, click."""
    d = song_dir("01-sound-check")
    beat = 60.0 / 120.0
    bars = 4
    length = bars * 4 * beat  # 8.0 s

    # C - Am - F - G, one chord per bar.
    chords = [
        (48, [60, 64, 67]),  # C:  C4 E4 G4
        (45, [60, 64, 69]),  # Am: C4 E4 A4
        (41, [60, 65, 69]),  # F:  C4 F4 A4
        (43, [59, 62, 67]),  # G:  B3 D4 G4
    ]
    pad = silence(length)
    bass = silence(length)
    for bar, (root, notes) in enumerate(chords):
        t0 = bar * 4 * beat
        last = bar == bars - 1
        hold = 4 * beat - (0.55 if last else 0.0)
        for note in notes:
            for cents in (-7.0, 7.0):
                f = midi_hz(note) * 2.0 ** (cents / 1200.0)
                render_voice(pad, PAD_TABLE, f, t0, hold, 1.0, attack=0.12,
                             release=0.5 if last else 0.35, phase=RNG.random())
        # Bass: root on 1, root on the "and" of 2, fifth on 3, octave on 4.
        pattern = [(0.0, root, 0.9), (1.5, root, 0.5), (2.0, root + 7, 0.8),
                   (3.0, root + 12, 0.7)]
        if last:
            pattern = [(0.0, root, 0.9), (1.5, root, 0.5), (2.0, root, 0.8)]
        for pos, note, vel in pattern:
            dur = (1.8 if (last and pos == 2.0) else 0.8) * beat
            render_voice(bass, BASS_TABLE, midi_hz(note), t0 + pos * beat, dur,
                         vel, attack=0.004, release=0.04, decay=0.25, sustain=0.45)
    pad = fade(normalize(pad, -13.0))
    bass = fade(normalize(bass, -13.0))
    out = os.path.join(d, "backing.flac")
    encode_flac([pad, bass], out)
    say(out)

    # No file fades on clicks: each blip starts from and decays to silence,
    # and a fade-in would blunt the downbeat at t = 0.
    click = silence(length)
    for b in range(bars * 4):
        render_click(click, b * beat, accent=(b % 4 == 0))
    out = os.path.join(d, "click.wav")
    write_wav(out, [click])
    say(out)


# ----------------------------------------------------------- 2: Tempo Change

SONG2_START = 0.5
SONG2_BPM0 = 100.0
SONG2_BPM1 = 140.0
SONG2_RAMP_FROM = 16.0  # beat position of measure 5 beat 1
SONG2_RAMP_BEATS = 8.0  # transition: { measures: 2 } in 4/4


def song2_time(b):
    """Seconds from the start of the audio to beat position b (see docstring)."""
    b0, n, B0, B1 = SONG2_RAMP_FROM, SONG2_RAMP_BEATS, SONG2_BPM0, SONG2_BPM1
    t_ramp = SONG2_START + b0 * 60.0 / B0
    if b <= b0:
        return SONG2_START + b * 60.0 / B0
    if b <= b0 + n:
        bpm = B0 + (B1 - B0) * (b - b0) / n
        return t_ramp + 60.0 * n / (B1 - B0) * math.log(bpm / B0)
    t_end = t_ramp + 60.0 * n / (B1 - B0) * math.log(B1 / B0)
    return t_end + (b - b0 - n) * 60.0 / B1


def tempo_change():
    """Measures 1-4 at 100, ramp over 5-6, measure 7 at 140, final hit on 8."""
    d = song_dir("02-tempo-change")
    last_beat = 28  # measure 8 beat 1: the final note
    length = song2_time(last_beat) + 0.45

    # One chord root per measure: Am F C G | Am F | G | (A)
    roots = [45, 41, 36, 43, 45, 41, 43]
    bass = silence(length)
    for m, root in enumerate(roots):
        # Driving eighths: root, root, octave, root, fifth, root, octave, fifth.
        steps = [0, 0, 12, 0, 7, 0, 12, 7]
        for e, step in enumerate(steps):
            b = m * 4 + e * 0.5
            t = song2_time(b)
            gate = 0.8 * (song2_time(b + 0.5) - t)
            vel = 0.9 if e % 2 == 0 else 0.6
            render_voice(bass, BASS_TABLE, midi_hz(root + step), t, gate, vel,
                         attack=0.004, release=0.03, decay=0.2, sustain=0.5)
    render_voice(bass, BASS_TABLE, midi_hz(33), song2_time(last_beat), 0.3, 1.0,
                 attack=0.004, release=0.1, decay=0.3, sustain=0.4)
    bass = fade(normalize(bass, -14.0))  # lossy: leave room for overshoot
    out = os.path.join(d, "bass.ogg")
    encode_ogg([bass], out)
    say(out)

    click = silence(length)
    for b in range(last_beat + 1):
        render_click(click, song2_time(b), accent=(b % 4 == 0))
    # FLAC keeps the example under 2 MB; song 1 keeps a WAV click so both decoders run.
    out = os.path.join(d, "click.flac")
    encode_flac([click], out)
    say(out)


# -------------------------------------------------------------- 3: With MIDI

PPQ = 480
SONG3_TEMPO_US = 545455  # round(60e6 / 110): the Set Tempo meta event value


def vlq(n):
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def smf_track(events, end_tick):
    """events: [(tick, order, bytes)]; order breaks ties (note-offs first)."""
    events = sorted(events, key=lambda e: (e[0], e[1]))
    body = bytearray()
    now = 0
    for tick, _, data in events:
        body += vlq(tick - now) + data
        now = tick
    body += vlq(end_tick - now) + b"\xff\x2f\x00"  # End of Track
    return b"MTrk" + struct.pack(">I", len(body)) + bytes(body)


def meta(kind, payload):
    return bytes([0xFF, kind]) + vlq(len(payload)) + payload


def note(events, ch, tick, dur, key, vel):
    events.append((tick, 3, bytes([0x90 | (ch - 1), key, vel])))
    events.append((tick + dur, 2, bytes([0x80 | (ch - 1), key, 0])))


def with_midi():
    """110 BPM, 4/4, four bars; MIDI drums + bass, audio pad + click."""
    d = song_dir("03-with-midi")
    bars = 4
    bar_ticks = 4 * PPQ
    end_tick = bars * bar_ticks
    eighth = PPQ // 2

    # Track 0: conductor.
    conductor = [
        (0, 0, meta(0x03, b"With MIDI")),
        (0, 0, meta(0x58, bytes([4, 2, 24, 8]))),  # 4/4, 24 clocks/click, 8 32nds/quarter
        (0, 0, meta(0x51, SONG3_TEMPO_US.to_bytes(3, "big"))),
    ]
    # Track 1: drums on channel 10 (GM: 36 kick, 38 snare, 42 closed hat, 49 crash).
    drums = [(0, 0, meta(0x03, b"Drums"))]
    for bar in range(bars):
        t0 = bar * bar_ticks
        for e in range(8):
            t = t0 + e * eighth
            note(drums, 10, t, 60, 42, 92 if e % 2 == 0 else 64)
            if e in (0, 4, 5):
                note(drums, 10, t, 60, 36, 110 if e == 0 else 96)
            if e in (2, 6):
                note(drums, 10, t, 60, 38, 104)
        if bar == 0:
            note(drums, 10, t0, 60, 49, 100)
        if bar == bars - 1:  # little fill: sixteenth snares on the last beat
            for s in range(1, 4):
                note(drums, 10, t0 + 3 * PPQ + s * (PPQ // 4), 40, 38, 70 + 10 * s)
    # Track 2: bass on channel 1, Dm - Bb - F - C, driving eighths.
    bass = [(0, 0, meta(0x03, b"Bass")), (0, 1, bytes([0xC0, 33]))]  # GM 34: finger bass
    roots = [38, 34, 41, 36]
    for bar, root in enumerate(roots):
        for e, step in enumerate([0, 0, 0, 12, 0, 0, 7, 12]):
            note(bass, 1, bar * bar_ticks + e * eighth, 200, root + step,
                 100 if e % 2 == 0 else 80)

    smf = (b"MThd" + struct.pack(">IHHH", 6, 1, 3, PPQ)
           + smf_track(conductor, end_tick)
           + smf_track(drums, end_tick)
           + smf_track(bass, end_tick))
    out = os.path.join(d, "song.mid")
    with open(out, "wb") as f:
        f.write(smf)
    say(out)

    # The beat follows the MIDI file's tempo (545455 us per quarter, 109.99991 BPM).
    beat = SONG3_TEMPO_US / 1e6
    length = bars * 4 * beat + 0.5

    # Stereo pad: same chords as the bass, each side detuned differently.
    chords = [[57, 62, 65], [58, 62, 65], [57, 60, 65], [55, 60, 64]]
    left = silence(length)
    right = silence(length)
    for bar, notes in enumerate(chords):
        t0 = bar * 4 * beat
        last = bar == bars - 1
        hold = 4 * beat - (0.1 if last else 0.0)
        for n in notes:
            for buf, cents in ((left, -9.0), (left, 3.0), (right, -3.0), (right, 9.0)):
                f = midi_hz(n) * 2.0 ** (cents / 1200.0)
                render_voice(buf, PAD_TABLE, f, t0, hold, 1.0, attack=0.15,
                             release=0.45 if last else 0.3, phase=RNG.random())
        # An octave-up shimmer note on the right only, for width.
        render_voice(right, PAD_TABLE, midi_hz(notes[-1] + 12), t0 + 2 * beat,
                     2 * beat, 0.25, attack=0.3, release=0.4, phase=RNG.random())
    peak = max(max(abs(v) for v in left), max(abs(v) for v in right))
    g = db(-14.0) / peak  # same gain on both sides keeps the stereo balance
    left = fade([v * g for v in left])
    right = fade([v * g for v in right])
    out = os.path.join(d, "pad.mp3")
    encode_mp3([left, right], out)
    say(out)

    click = silence(length)
    for b in range(bars * 4):
        render_click(click, b * beat, accent=(b % 4 == 0))
    out = os.path.join(d, "click.flac")
    encode_flac([click], out)
    say(out)


def main():
    for tool in ("flac", "oggenc", "lame"):
        if shutil.which(tool) is None:
            sys.exit("generate.py: `%s` not found on PATH" % tool)
    sound_check()
    tempo_change()
    with_midi()


if __name__ == "__main__":
    main()
