"""Codec descriptions and encoders: G.711 against known code points; G.722/Opus decoded back."""

from __future__ import annotations

import numpy as np
import pytest

from sipswarm.errors import ConfigError
from sipswarm.media.codecs import (
    G722,
    OPUS,
    PCMA,
    PCMU,
    TELEPHONE_EVENT,
    codec_by_name,
    decode_g711,
    encode_audio,
    encode_g711,
)


def pcm(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int16)


# (linear, μ-law code, decoded) per the G.711 segment tables
ULAW_POINTS = [
    (0, 0xFF, 0),
    (-1, 0x7F, 0),
    (1, 0xFF, 0),
    (100, 0xF2, 104),  # 100 + 132 = 232: segment 0, mantissa 13 -> (13 << 3) + 132 - 132
    (32767, 0x80, 32124),
    (-32768, 0x00, -32124),
    (1000, 0xCE, 988),
    (-1000, 0x4E, -988),
]


@pytest.mark.parametrize(("linear", "code", "decoded"), ULAW_POINTS)
def test_ulaw_known_points(linear: int, code: int, decoded: int) -> None:
    assert encode_g711(PCMU, pcm(linear)) == bytes([code])
    assert int(decode_g711(PCMU, bytes([code]))[0]) == decoded


ALAW_POINTS = [
    (0, 0xD5, 8),
    (-1, 0x55, -8),
    (32767, 0xAA, 32256),
    (-32768, 0x2A, -32256),
    (1000, 0xFA, 1008),
    (-1000, 0x7A, -1008),
]


@pytest.mark.parametrize(("linear", "code", "decoded"), ALAW_POINTS)
def test_alaw_known_points(linear: int, code: int, decoded: int) -> None:
    assert encode_g711(PCMA, pcm(linear)) == bytes([code])
    assert int(decode_g711(PCMA, bytes([code]))[0]) == decoded


@pytest.mark.parametrize("codec", [PCMU, PCMA])
def test_g711_code_roundtrip_is_identity(codec) -> None:
    codes = bytes(range(256))
    decoded = decode_g711(codec, codes)
    reencoded = encode_g711(codec, decoded)
    if codec is PCMU:  # 0x7F (-0) decodes to 0, which encodes as 0xFF (+0)
        assert reencoded == codes.replace(b"\x7f", b"\xff")
    else:
        assert reencoded == codes


@pytest.mark.parametrize("codec", [PCMU, PCMA])
def test_g711_linear_roundtrip_error_is_bounded(codec) -> None:
    x = np.arange(-32768, 32768, 7, dtype=np.int16)
    y = decode_g711(codec, encode_g711(codec, x)).astype(np.int32)
    err = np.abs(y - x.astype(np.int32))
    # logarithmic quantiser: error within half a step, step = 2**(segment+1)..; <= 3.2 % + 16
    assert np.all(err <= np.abs(x.astype(np.int32)) * 0.032 + 16)
    assert encode_g711(codec, x) == encode_g711(codec, list(x))  # type: ignore[arg-type]


def test_descriptions() -> None:
    assert PCMU.rtpmap == "PCMU/8000" and PCMU.payload_type == 0
    assert PCMA.payload_type == 8
    # RFC 3551 §4.5.2: G.722 samples at 16 kHz, advertises and ticks 8000
    assert G722.rtpmap == "G722/8000" and G722.sample_rate == 16000
    assert G722.samples_per_frame(20) == 320 and G722.timestamp_step(20) == 160
    assert OPUS.rtpmap == "opus/48000/2" and not OPUS.static
    assert OPUS.timestamp_step(20) == 960
    assert TELEPHONE_EVENT.fmtp == "0-16"
    assert codec_by_name("pcmu") is PCMU and codec_by_name("OPUS") is OPUS
    assert OPUS.with_payload_type(96).payload_type == 96 and OPUS.payload_type == 111


def test_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match=r"unknown codec 'G729'.*PCMU"):
        codec_by_name("G729")
    with pytest.raises(ConfigError, match="ptime_ms 25 is not supported by opus"):
        OPUS.check_ptime(25)
    with pytest.raises(ConfigError, match="0-127"):
        PCMU.with_payload_type(128)
    with pytest.raises(ConfigError, match="whole number"):
        encode_audio(PCMU, np.zeros(100, dtype=np.int16), 20)
    with pytest.raises(ConfigError, match="cannot encode"):
        encode_audio(TELEPHONE_EVENT, np.zeros(160, dtype=np.int16), 20)


def _decode_av(name: str, rate: int, payloads: list[bytes]) -> np.ndarray:
    import av

    ctx = av.CodecContext.create(name, "r")
    ctx.sample_rate = rate
    ctx.layout = "mono"
    out = []
    for p in payloads:
        for frame in ctx.decode(av.Packet(p)):
            out.append(frame.to_ndarray().reshape(-1))
    samples = np.concatenate(out)
    if samples.dtype.kind == "f":
        samples = samples * 32767
    return samples.astype(np.float64)


def _dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def _tone(freq: float, rate: int, n: int) -> np.ndarray:
    return np.round(7000 * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.int16)


def test_g722_encodes_decodable_tone() -> None:
    frames = encode_audio(G722, _tone(1000, 16000, 320 * 50), 20)
    assert len(frames) == 50 and {len(f) for f in frames} == {160}
    decoded = _decode_av("g722", 16000, frames * 2)[320 * 50 :]
    assert abs(_dominant_hz(decoded, 16000) - 1000) < 5
    assert 3000 < np.sqrt(np.mean(decoded**2)) < 6000  # 7000 peak sine -> ~4950 rms


def test_opus_encodes_decodable_tone() -> None:
    frames = encode_audio(OPUS, _tone(600, 48000, 960 * 50), 20)
    assert len(frames) == 50 and all(10 < len(f) < 400 for f in frames)
    decoded = _decode_av("libopus", 48000, frames * 2)[960 * 50 :]
    assert abs(_dominant_hz(decoded, 48000) - 600) < 5
