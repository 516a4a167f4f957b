"""Sources: tone level and loop continuity, silence, WAV parsing errors, resampling, the cache."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from sipswarm.errors import ConfigError
from sipswarm.media.codecs import G722, OPUS, PCMA, PCMU, decode_g711
from sipswarm.media.sources import (
    clear_source_cache,
    get_source,
    parse_wav,
    resample,
    synthesise,
)


def wav_bytes(
    samples: np.ndarray, rate: int, *, channels: int = 1, bits: int = 16, tag: int = 1
) -> bytes:
    data = samples.astype("<i2").tobytes()
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"LIST" + struct.pack("<I", 3) + b"abc\x00"  # odd-sized chunk, padded
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    clear_source_cache()


def test_tone_g711_loops_with_continuous_phase() -> None:
    src = get_source("tone", {"frequency_hz": 440}, PCMU, 20)
    # 440 Hz over 160-sample frames at 8 kHz: 8.8 cycles per frame -> loop of 5 frames
    assert src.frames == 5 and src.samples_per_frame == 160 and src.timestamp_step == 160
    assert len(src.frame(0)) == 160 and src.frame(7) == src.frame(2)
    two_loops = b"".join(src.frame(i) for i in range(10))
    x = decode_g711(PCMU, two_loops).astype(np.float64)
    expected = 7219 * np.sin(2 * np.pi * 440 * np.arange(1600) / 8000)  # -10 dBm0 peak
    assert np.max(np.abs(x - expected)) < 0.04 * 7219 + 16


def test_tone_level_dbm0() -> None:
    loud = synthesise("tone", {"frequency_hz": 1000, "level_dbm0": 0}, PCMA, 20)
    quiet = synthesise("tone", {"frequency_hz": 1000, "level_dbm0": -20}, PCMA, 20)
    # 0 dBm0 peaks 3.14 dB below full scale; -20 dBm0 is a tenth of that
    assert int(np.max(loud)) == round(32767 * 10 ** (-3.14 / 20))
    assert np.max(quiet) == pytest.approx(np.max(loud) / 10, abs=1)
    assert len(loud) == 160  # 1000 Hz: 20 whole cycles per frame, one frame loops


def test_g711_source_is_one_sliced_buffer() -> None:
    src = get_source("tone", {"frequency_hz": 1000}, PCMU, 30)
    assert src.frames == 1 and len(src.frame(123)) == 240
    silence = get_source("silence", {}, PCMU, 20)
    assert silence.frame(5) == b"\xff" * 160
    assert get_source("silence", {}, PCMA, 20).frame(0) == b"\xd5" * 160


def test_stateful_codecs_get_at_least_a_second() -> None:
    g722 = get_source("tone", {"frequency_hz": 1000}, G722, 20)
    assert g722.frames == 50 and len(g722.frame(49)) == 160 and g722.timestamp_step == 160
    opus = get_source("tone", {"frequency_hz": 1000}, OPUS, 20)
    assert opus.frames == 50 and opus.timestamp_step == 960
    assert opus.frame(50) == opus.frame(0)


def test_cache_returns_the_same_object() -> None:
    a = get_source("tone", {"frequency_hz": 1000}, PCMU, 20)
    assert get_source("tone", {"frequency_hz": 1000}, PCMU, 20) is a
    assert get_source("tone", {"frequency_hz": 1000}, PCMU.with_payload_type(0), 20) is a
    assert get_source("tone", {"frequency_hz": 1000}, PCMA, 20) is not a
    assert get_source("tone", {"frequency_hz": 1000, "level_dbm0": -20}, PCMU, 20) is not a


def test_file_source_resampled(tmp_path: Path) -> None:
    rate = 44100
    n = rate // 2  # 0.5 s of 500 Hz
    tone = np.round(8000 * np.sin(2 * np.pi * 500 * np.arange(n) / rate))
    path = tmp_path / "tone.wav"
    path.write_bytes(wav_bytes(tone, rate))
    src = get_source("file", {"path": str(path)}, PCMU, 20)
    assert src.frames == 25
    x = decode_g711(PCMU, b"".join(src.frame(i) for i in range(25))).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x))
    assert np.argmax(spectrum) * 8000 / len(x) == pytest.approx(500, abs=2)
    assert np.sqrt(np.mean(x**2)) == pytest.approx(8000 / np.sqrt(2), rel=0.05)


def test_file_shorter_than_a_frame_is_padded(tmp_path: Path) -> None:
    path = tmp_path / "short.wav"
    path.write_bytes(wav_bytes(np.full(50, 1000), 8000))
    src = get_source("file", {"path": str(path)}, PCMA, 20)
    assert src.frames == 1 and len(src.frame(0)) == 160


def test_resample_preserves_frequency_and_length() -> None:
    x = np.round(10000 * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)).astype(np.int16)
    y = resample(x, 16000, 8000)
    assert len(y) == 8000
    expected = 10000 * np.sin(2 * np.pi * 300 * np.arange(8000) / 8000)
    assert np.max(np.abs(y - expected)) < 3
    assert resample(x, 16000, 16000) is not x and np.array_equal(resample(x, 16000, 16000), x)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"ID3\x03" + b"\x00" * 100, "not a WAV file"),
        (wav_bytes(np.zeros(10), 8000, tag=3, bits=32), "IEEE float"),
        (wav_bytes(np.zeros(10), 8000, tag=7, bits=8), "μ-law"),
        (wav_bytes(np.zeros(10), 8000, channels=2), "2 channels, need mono"),
        (wav_bytes(np.zeros(10), 8000, bits=24), "24-bit samples"),
        (wav_bytes(np.zeros(0), 8000), "no audio samples"),
        (b"RIFF\x04\x00\x00\x00WAVE", "no valid 'fmt ' chunk"),
    ],
)
def test_bad_wav_files(data: bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_wav(data, name="x.wav")


def test_wav_extensible_pcm_is_accepted() -> None:
    samples = np.arange(100, dtype=np.int16)
    fmt = struct.pack("<HHIIHH", 0xFFFE, 1, 8000, 16000, 2, 16)
    fmt += struct.pack("<HHI", 22, 16, 4) + struct.pack("<H", 1)
    fmt += bytes.fromhex("000000001000800000aa00389b71")
    data = samples.astype("<i2").tobytes()
    body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", 200) + data
    got, rate = parse_wav(b"RIFF" + struct.pack("<I", len(body)) + body)
    assert rate == 8000 and np.array_equal(got, samples)


def test_missing_file_and_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        get_source("file", {"path": str(tmp_path / "nope.wav")}, PCMU, 20)
    with pytest.raises(ConfigError, match="needs a 'path'"):
        get_source("file", {}, PCMU, 20)
    with pytest.raises(ConfigError, match="kind must be one of tone, silence, file"):
        get_source("noise", {}, PCMU, 20)
    with pytest.raises(ConfigError, match=r"unknown settings \['freq'\]"):
        get_source("tone", {"freq": 400}, PCMU, 20)
    with pytest.raises(ConfigError, match="frequency_hz must be between 0 and 4000"):
        get_source("tone", {"frequency_hz": 5000}, PCMU, 20)
    with pytest.raises(ConfigError, match="frequency_hz must be a number"):
        get_source("tone", {"frequency_hz": "loud"}, PCMU, 20)
    with pytest.raises(ConfigError, match="level_dbm0"):
        get_source("tone", {"frequency_hz": 400, "level_dbm0": 6}, PCMU, 20)
    with pytest.raises(ConfigError, match="ptime_ms 25 is not supported by PCMU"):
        get_source("silence", {}, PCMU, 25)
