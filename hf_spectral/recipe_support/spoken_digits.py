"""An offline speech data set for the CTC recipe: spoken digit strings ("three one four").

Real synthesized speech from Debian's ``espeak-ng`` (``apt-get install espeak-ng``; ~15 ms an utterance),
with the voice, speed and pitch varied per utterance, resampled from 22,050 Hz to 16 kHz. Without
espeak-ng a **synthetic fallback** is used, clearly labelled as such: each character becomes a short
two-tone "formant" burst. It is not speech, only a signal a CTC model can learn, so that tests and
demos run anywhere.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from dataclasses import dataclass
from math import gcd

import numpy as np

SAMPLING_RATE = 16_000
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# accents × espeak-ng voice variants (male, female, older, whispery...)
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = ("", "+m1", "+m3", "+m5", "+f1", "+f2", "+f4", "+klatt", "+Andy", "+Annie")
ESPEAK = "espeak-ng"
FALLBACK = "tones (SYNTHETIC FALLBACK, not speech: espeak-ng is not installed)"


@dataclass
class SpokenDigits:
    """Utterances (float32 at 16 kHz), their transcripts, and what produced them."""

    audio: list[np.ndarray]
    text: list[str]
    voices: list[str]
    source: str  # "espeak-ng" or FALLBACK


def espeak_available() -> bool:
    """Whether the ``espeak-ng`` program is on PATH."""
    return shutil.which(ESPEAK) is not None


def spoken_digits(n: int, *, seed: int = 0, min_digits: int = 1, max_digits: int = 4,
                  source: str = "auto") -> SpokenDigits:
    """``n`` random digit strings of ``min_digits``-``max_digits`` words, spoken.

    source: ``"espeak"`` (fails with a one-line message when espeak-ng is missing), ``"tones"`` (the
    synthetic fallback) or ``"auto"`` (espeak-ng when installed, else the fallback).
    """
    if source not in ("auto", "espeak", "tones"):
        raise ValueError(f"spoken_digits: source {source!r} is not one of auto, espeak, tones")
    use_espeak = source == "espeak" or (source == "auto" and espeak_available())
    if use_espeak and not espeak_available():
        from hf_spectral.errors import SpectralError

        raise SpectralError("spoken_digits: espeak-ng is not installed; `apt-get install espeak-ng` "
                            "(as root) or pass source='tones' for the synthetic fallback")
    rng = np.random.default_rng(seed)
    out = SpokenDigits([], [], [], ESPEAK if use_espeak else FALLBACK)
    for _ in range(n):
        text = " ".join(DIGITS[d] for d in rng.integers(0, 10, rng.integers(min_digits, max_digits + 1)))
        if use_espeak:
            voice = f"{ACCENTS[rng.integers(len(ACCENTS))]}{VARIANTS[rng.integers(len(VARIANTS))]}"
            audio = speak(text, voice, speed=int(rng.integers(130, 211)), pitch=int(rng.integers(25, 76)))
        else:
            voice = "tones"
            audio = tone_utterance(text, rng)
        out.audio.append(audio)
        out.text.append(text)
        out.voices.append(voice)
    return out


def speak(text: str, voice: str, *, speed: int = 175, pitch: int = 50) -> np.ndarray:
    """``text`` spoken by espeak-ng (WAV on stdout, read with ``wave``), as float32 at 16 kHz."""
    wav = subprocess.run([ESPEAK, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate, width = w.getframerate(), w.getsampwidth()
        frames = w.readframes(w.getnframes())  # a streamed header overstates the length: read what is there
    if width != 2:
        raise ValueError(f"espeak-ng wrote {8 * width}-bit samples; expected 16-bit")
    audio = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    return resample_audio(audio, rate, SAMPLING_RATE)


def resample_audio(audio: np.ndarray, orig_rate: int, target_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Polyphase resampling (scipy's ``resample_poly``, anti-aliased) to ``target_rate``."""
    if orig_rate == target_rate:
        return np.asarray(audio, dtype=np.float32)
    from scipy.signal import resample_poly

    g = gcd(int(orig_rate), int(target_rate))
    return resample_poly(audio, target_rate // g, orig_rate // g).astype(np.float32)


def tone_utterance(text: str, rng: np.random.Generator, char_seconds: float = 0.06) -> np.ndarray:
    """The SYNTHETIC FALLBACK: each letter a Hann-windowed pair of tones at letter-specific frequencies
    (a crude two-formant vowel), spaces a pause; a random "speaker" scales pitch and duration."""
    pitch, tempo = rng.uniform(0.85, 1.15), rng.uniform(0.8, 1.25)
    pieces = [np.zeros(int(0.05 * SAMPLING_RATE), dtype=np.float32)]
    for ch in text:
        n = int(char_seconds * tempo * SAMPLING_RATE * (1.5 if ch == " " else 1.0))
        if ch == " ":
            pieces.append(np.zeros(n, dtype=np.float32))
            continue
        k = ord(ch) - ord("a")
        t = np.arange(n) / SAMPLING_RATE
        f1, f2 = pitch * (250 + 45 * (k % 13)), pitch * (900 + 110 * (k // 2))
        tone = np.sin(2 * np.pi * f1 * t) + 0.6 * np.sin(2 * np.pi * f2 * t)
        pieces.append((0.3 * np.hanning(n) * tone).astype(np.float32))
    pieces.append(np.zeros(int(0.05 * SAMPLING_RATE), dtype=np.float32))
    audio = np.concatenate(pieces)
    return audio + rng.normal(0, 0.003, audio.shape).astype(np.float32)
