"""Audio codecs: descriptions for SDP and RTP, G.711 by numpy lookup, G.722 and Opus via PyAV.

Theory of operation
-------------------
A :class:`Codec` says everything SDP and the RTP sender need: the encoding name and payload
type for ``a=rtpmap``, the RTP clock (G.722 advertises and ticks 8000 Hz although it samples
at 16000, RFC 3551 §4.5.2), the audio sample rate the encoder consumes, the channel count
written in rtpmap (Opus always says ``/2``, RFC 7587 §7) and the default ``a=fmtp``.

Encoding is not on the hot path: sources (``sources.py``) encode a whole signal once per
process and slice it per packet. G.711 is two table lookups in numpy (:func:`encode_g711`,
:func:`decode_g711`); G.722 and Opus go through PyAV (FFmpeg), imported only when used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from sipswarm.errors import ConfigError

__all__ = [
    "CODECS",
    "G722",
    "OPUS",
    "PCMA",
    "PCMU",
    "TELEPHONE_EVENT",
    "Codec",
    "codec_by_name",
    "decode_g711",
    "encode_audio",
    "encode_g711",
]

Samples = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class Codec:
    """One RTP payload format.

    ``clock_rate`` is the rate written in ``a=rtpmap``, ``rtp_clock_rate`` the rate the RTP
    timestamp advances at (equal for every RFC 3551 format; both are kept so that neither is
    confused with ``sample_rate``, the PCM rate the encoder eats). ``payload_type`` is the
    static type, or the default dynamic one (SDP negotiation may change it: see
    :meth:`with_payload_type`). ``ptimes`` lists the packet times the encoder supports.
    """

    name: str
    payload_type: int
    clock_rate: int
    rtp_clock_rate: int
    sample_rate: int
    channels: int = 1
    fmtp: str = ""
    static: bool = True
    ptimes: tuple[int, ...] = tuple(range(10, 201, 10))  # sample codecs: any 10 ms multiple
    bytes_per_second: int | None = None  # constant-bitrate payload size, None when variable

    @property
    def rtpmap(self) -> str:
        """The value of ``a=rtpmap:<pt>``, e.g. ``PCMU/8000`` or ``opus/48000/2``."""
        suffix = f"/{self.channels}" if self.channels != 1 else ""
        return f"{self.name}/{self.clock_rate}{suffix}"

    def samples_per_frame(self, ptime_ms: int) -> int:
        """PCM samples the encoder needs per packet."""
        return self.sample_rate * ptime_ms // 1000

    def timestamp_step(self, ptime_ms: int) -> int:
        """RTP timestamp increment per packet (RFC 3550 §5.1: in ``rtp_clock_rate`` units)."""
        return self.rtp_clock_rate * ptime_ms // 1000

    def check_ptime(self, ptime_ms: int) -> None:
        """Raise :class:`ConfigError` unless the encoder can packetise ``ptime_ms``."""
        if ptime_ms not in self.ptimes:
            raise ConfigError(
                f"media.ptime_ms {ptime_ms} is not supported by {self.name}; "
                f"use one of {', '.join(map(str, self.ptimes))}"
            )

    def with_payload_type(self, payload_type: int) -> Codec:
        """The same codec under the payload type negotiated in SDP."""
        if not 0 <= payload_type <= 127:
            raise ConfigError(f"payload type must be 0-127, got {payload_type}")
        return dataclasses.replace(self, payload_type=payload_type)


PCMU = Codec("PCMU", 0, 8000, 8000, 8000, bytes_per_second=8000)
PCMA = Codec("PCMA", 8, 8000, 8000, 8000, bytes_per_second=8000)
G722 = Codec("G722", 9, 8000, 8000, 16000, bytes_per_second=8000)
OPUS = Codec(
    "opus",
    111,
    48000,
    48000,
    48000,
    channels=2,
    fmtp="minptime=10;useinbandfec=1",
    static=False,
    ptimes=(10, 20, 40, 60),
)
TELEPHONE_EVENT = Codec(
    "telephone-event", 101, 8000, 8000, 8000, fmtp="0-16", static=False, ptimes=(20, 30, 40, 50)
)

CODECS: dict[str, Codec] = {c.name.upper(): c for c in (PCMU, PCMA, G722, OPUS, TELEPHONE_EVENT)}


def codec_by_name(name: str) -> Codec:
    """The codec for an SDP encoding name (case-insensitive), or :class:`ConfigError`."""
    try:
        return CODECS[name.upper()]
    except KeyError:
        raise ConfigError(
            f"media.codecs: unknown codec {name!r}; supported: "
            + ", ".join(c.name for c in CODECS.values())
        ) from None


# -- G.711 (ITU-T G.711; the classic Sun reference algorithm, vectorised) --------------------

_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _ulaw_encode_table() -> npt.NDArray[np.uint8]:
    x = np.arange(-32768, 32768, dtype=np.int32)
    sign = np.where(x < 0, 0x80, 0)
    mag = np.minimum(np.abs(x), _ULAW_CLIP) + _ULAW_BIAS
    exponent = np.floor(np.log2(mag >> 7)).astype(np.int32)  # mag >> 7 is 1..255
    mantissa = (mag >> (exponent + 3)) & 0x0F
    code = ~(sign | (exponent << 4) | mantissa) & 0xFF
    table = np.empty(65536, dtype=np.uint8)
    table[x & 0xFFFF] = code
    return table


def _ulaw_decode_table() -> Samples:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    mag = (((mantissa << 3) + _ULAW_BIAS) << exponent) - _ULAW_BIAS
    return np.where(u & 0x80, -mag, mag).astype(np.int16)


def _alaw_encode_table() -> npt.NDArray[np.uint8]:
    x = np.arange(-32768, 32768, dtype=np.int32)
    pcm = x >> 3  # 13-bit
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    pcm = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted(_ALAW_SEG_END, pcm, side="left").astype(np.int32)
    shift = np.where(seg < 2, 1, seg)
    aval = (seg << 4) | ((pcm >> np.minimum(shift, 15)) & 0x0F)
    aval = np.where(seg >= 8, 0x7F, aval)
    table = np.empty(65536, dtype=np.uint8)
    table[x & 0xFFFF] = (aval ^ mask) & 0xFF
    return table


def _alaw_decode_table() -> Samples:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


_ENCODE_TABLES = {"PCMU": _ulaw_encode_table(), "PCMA": _alaw_encode_table()}
_DECODE_TABLES = {"PCMU": _ulaw_decode_table(), "PCMA": _alaw_decode_table()}


def encode_g711(codec: Codec, samples: Samples) -> bytes:
    """Encode 16-bit PCM at 8 kHz as PCMU (μ-law) or PCMA (A-law), one byte per sample."""
    table = _ENCODE_TABLES[codec.name.upper()]
    pcm = np.ascontiguousarray(samples, dtype=np.int16)
    return bytes(table[pcm.view(np.uint16)].tobytes())


def decode_g711(codec: Codec, payload: bytes) -> Samples:
    """Decode a PCMU or PCMA payload to 16-bit PCM (used by tests and received-audio checks)."""
    table = _DECODE_TABLES[codec.name.upper()]
    return table[np.frombuffer(payload, dtype=np.uint8)]


# -- G.722 and Opus through PyAV ----------------------------------------------------------


def _av_context(codec: Codec, ptime_ms: int) -> Any:
    import av  # heavy: imported only by processes that encode G.722 or Opus

    name = {"G722": "g722", "OPUS": "libopus"}[codec.name.upper()]
    ctx: Any = av.CodecContext.create(name, "w")  # an AudioCodecContext for these names
    ctx.sample_rate = codec.sample_rate
    ctx.layout = "mono"
    ctx.format = "s16"
    if name == "libopus":
        ctx.bit_rate = 32000
        ctx.options = {"application": "voip", "frame_duration": str(ptime_ms)}
    ctx.open()
    return ctx


def _av_encode(codec: Codec, samples: Samples, ptime_ms: int) -> list[bytes]:
    import av

    ctx = _av_context(codec, ptime_ms)
    step = ctx.frame_size or codec.samples_per_frame(ptime_ms)
    packets: list[bytes] = []
    for start in range(0, len(samples), step):
        chunk = np.ascontiguousarray(samples[start : start + step], dtype=np.int16)
        if len(chunk) < step:
            chunk = np.pad(chunk, (0, step - len(chunk)))
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = codec.sample_rate
        frame.pts = start
        packets.extend(bytes(p) for p in ctx.encode(frame))
    packets.extend(bytes(p) for p in ctx.encode(None))
    return packets


def encode_audio(codec: Codec, samples: Samples, ptime_ms: int) -> list[bytes]:
    """Encode a looping signal into one payload per ``ptime_ms``; len(samples) must be a multiple.

    Stateful encoders (G.722 ADPCM, Opus) run over the signal twice and keep the second pass,
    so that the encoder state at the loop point is the state a continuous stream would have.
    """
    codec.check_ptime(ptime_ms)
    spf = codec.samples_per_frame(ptime_ms)
    if len(samples) == 0 or len(samples) % spf:
        raise ConfigError(f"encode_audio needs a whole number of {spf}-sample frames")
    count = len(samples) // spf
    kind = codec.name.upper()
    if kind in _ENCODE_TABLES:
        data = encode_g711(codec, samples)
        return [data[i * spf : (i + 1) * spf] for i in range(count)]
    if kind == "G722":
        # 4 bits per 16 kHz sample: one byte per two samples, one continuous bitstream
        data = b"".join(_av_encode(codec, np.concatenate([samples, samples]), ptime_ms))
        size = spf // 2
        return [data[(count + i) * size : (count + i + 1) * size] for i in range(count)]
    if kind == "OPUS":
        packets = _av_encode(codec, np.concatenate([samples, samples]), ptime_ms)
        if len(packets) < 2 * count:
            raise ConfigError(f"Opus encoder returned {len(packets)} packets for {2 * count}")
        return packets[count : 2 * count]
    raise ConfigError(f"{codec.name} carries no audio and cannot encode a source")
