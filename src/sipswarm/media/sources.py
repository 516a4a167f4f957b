"""Media sources encoded once per process and sliced per packet: tone, silence, WAV file.

Theory of operation
-------------------
Encoding a 20 ms frame costs 40-60 µs through a codec call, slicing a ready buffer 0.25 µs
(ARCHITECTURE.md, "Where the time goes"). So a source is synthesised (or read and resampled)
and encoded *once* per (kind, params, codec, ptime) by :func:`get_source`, which keeps it in a
process-wide cache; every RTP stream using it then calls ``source.frame(index)`` per packet
with its own packet counter. The signal loops: frame ``index`` is frame ``index % frames``.

* tone: a sine at ``frequency_hz`` and ``level_dbm0`` (default -10 dBm0). The loop is a whole
  number of frames *and* of periods, so the phase is continuous across the loop point.
* silence: digital zero, one frame.
* file: a WAV file, PCM 16-bit mono at any rate, resampled to the codec's sample rate.

For G.711 (and G.722, a constant 4 bits per sample) the frames are fixed-size slices of one
encoded buffer; Opus packets vary in size and are kept as a list.
"""

from __future__ import annotations

import math
import os
import struct
from collections import OrderedDict
from collections.abc import Mapping
from fractions import Fraction

import numpy as np

from sipswarm.errors import ConfigError
from sipswarm.media.codecs import Codec, Samples, encode_audio

__all__ = [
    "DEFAULT_TONE_LEVEL_DBM0",
    "EncodedSource",
    "clear_source_cache",
    "get_source",
    "parse_wav",
    "resample",
    "synthesise",
]

DEFAULT_TONE_LEVEL_DBM0 = -10.0
# G.711: a full-scale sine is +3.14 dBm0 (A-law; +3.17 for μ-law), so 0 dBm0 peaks 3.14 dB down.
FULL_SCALE_DBM0 = 3.14
MAX_LOOP_FRAMES = 500  # a tone whose period does not divide a short loop repeats after 10 s
MIN_STATEFUL_LOOP_FRAMES = 50  # G.722/Opus loop at least 1 s at 20 ms, so the seam is rare
MAX_FILE_SECONDS = 600
CACHE_SIZE = 64

ParamValue = float | int | str
Params = Mapping[str, ParamValue]


class EncodedSource:
    """Encoded payloads of one looping source for one codec and ptime.

    Call :meth:`frame` with the stream's packet index for every packet; advance the RTP
    timestamp by ``timestamp_step``. Instances are shared between streams and never change.
    """

    __slots__ = (
        "_buffer",
        "_frame_bytes",
        "_frames",
        "codec",
        "frames",
        "ptime_ms",
        "samples_per_frame",
        "timestamp_step",
    )

    def __init__(self, codec: Codec, ptime_ms: int, payloads: list[bytes]) -> None:
        self.codec = codec
        self.ptime_ms = ptime_ms
        self.samples_per_frame = codec.samples_per_frame(ptime_ms)
        self.timestamp_step = codec.timestamp_step(ptime_ms)
        self.frames = len(payloads)
        sizes = {len(p) for p in payloads}
        if len(sizes) == 1:
            self._frame_bytes = sizes.pop()
            self._buffer = b"".join(payloads)
            self._frames: tuple[bytes, ...] = ()
        else:
            self._frame_bytes = 0
            self._buffer = b""
            self._frames = tuple(payloads)

    def frame(self, index: int) -> bytes:
        """The payload of packet ``index`` (any non-negative integer; the source loops)."""
        size = self._frame_bytes
        if size:
            start = (index % self.frames) * size
            return self._buffer[start : start + size]
        return self._frames[index % self.frames]

    def contiguous(self) -> tuple[bytes, int, int] | None:
        """``(buffer, frame_bytes, frames)`` when every frame is a fixed slice of one buffer.

        G.711 and G.722 are kept that way (the C sender slices them itself,
        ``engine/rtp_fastpath.py``); frames of varying size (Opus) give None.
        """
        if not self._frame_bytes:
            return None
        return self._buffer, self._frame_bytes, self.frames

    @property
    def duration_s(self) -> float:
        """Length of one loop in seconds."""
        return self.frames * self.ptime_ms / 1000


# -- signals --------------------------------------------------------------------------------


def _tone_loop_frames(frequency_hz: float, sample_rate: int, spf: int) -> int:
    cycles_per_frame = Fraction(frequency_hz).limit_denominator(10_000) * spf / sample_rate
    return min(cycles_per_frame.denominator, MAX_LOOP_FRAMES)


def _tone(params: Params, codec: Codec, spf: int, stateful: bool) -> Samples:
    frequency = _number(params, "frequency_hz", None)
    level = _number(params, "level_dbm0", DEFAULT_TONE_LEVEL_DBM0)
    if not 0 < frequency < codec.sample_rate / 2:
        raise ConfigError(
            f"media.source.frequency_hz must be between 0 and {codec.sample_rate // 2} Hz "
            f"for {codec.name}, got {frequency}"
        )
    if not -80.0 <= level <= FULL_SCALE_DBM0:
        raise ConfigError(
            f"media.source.level_dbm0 must be between -80 and {FULL_SCALE_DBM0}, got {level}"
        )
    frames = _tone_loop_frames(frequency, codec.sample_rate, spf)
    if stateful:
        frames *= math.ceil(MIN_STATEFUL_LOOP_FRAMES / frames)
    n = np.arange(frames * spf, dtype=np.float64)
    amplitude = 32767 * 10 ** ((level - FULL_SCALE_DBM0) / 20)
    return np.round(amplitude * np.sin(2 * np.pi * frequency * n / codec.sample_rate)).astype(
        np.int16
    )


def _file(params: Params, codec: Codec, spf: int, stateful: bool) -> Samples:
    path = params.get("path")
    if not isinstance(path, str):
        raise ConfigError("media.source kind 'file' needs a 'path' to a WAV file")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_SECONDS * 96_000 * 2 + 4096)
    except OSError as exc:
        raise ConfigError(f"media file {path}: cannot read it ({exc.strerror})") from None
    samples, rate = parse_wav(data, name=path)
    pcm = resample(samples, rate, codec.sample_rate)
    frames = max(1, math.ceil(len(pcm) / spf))
    return np.pad(pcm, (0, frames * spf - len(pcm)))


def _silence(params: Params, codec: Codec, spf: int, stateful: bool) -> Samples:
    return np.zeros(spf, dtype=np.int16)


_SYNTHESISERS = {"tone": _tone, "silence": _silence, "file": _file}
_KNOWN_PARAMS = {"tone": {"frequency_hz", "level_dbm0"}, "silence": set(), "file": {"path"}}


def _number(params: Params, key: str, default: float | None) -> float:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"media.source.{key} must be a number, got {value!r}")
    return float(value)


def synthesise(kind: str, params: Params, codec: Codec, ptime_ms: int) -> Samples:
    """The PCM loop of a source at ``codec.sample_rate``, a whole number of frames long."""
    if kind not in _SYNTHESISERS:
        raise ConfigError(
            f"media.source.kind must be one of {', '.join(_SYNTHESISERS)}, got {kind!r}"
        )
    unknown = set(params) - _KNOWN_PARAMS[kind]
    if unknown:
        raise ConfigError(
            f"media.source ({kind}) has unknown settings {sorted(unknown)}; "
            f"allowed: {sorted(_KNOWN_PARAMS[kind])}"
        )
    codec.check_ptime(ptime_ms)
    stateful = codec.name.upper() not in ("PCMU", "PCMA")
    return _SYNTHESISERS[kind](params, codec, codec.samples_per_frame(ptime_ms), stateful)


# -- WAV and resampling ---------------------------------------------------------------------

_PCM_SUBFORMAT_TAIL = bytes.fromhex("000000001000800000aa00389b71")  # KSDATAFORMAT_SUBTYPE_PCM


def _wav_chunks(data: bytes, name: str) -> dict[bytes, bytes]:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ConfigError(f"media file {name}: not a WAV file (no RIFF/WAVE header)")
    chunks: dict[bytes, bytes] = {}
    pos = 12
    while pos + 8 <= len(data):
        cid, size = struct.unpack_from("<4sI", data, pos)
        chunks.setdefault(cid, data[pos + 8 : pos + 8 + size])
        pos += 8 + size + (size & 1)  # RIFF chunks are word aligned
    return chunks


def parse_wav(data: bytes, name: str = "<wav>") -> tuple[Samples, int]:
    """PCM samples and sample rate of a WAV file; :class:`ConfigError` naming what is wrong.

    Accepts PCM 16-bit mono (format tag 1, or WAVE_FORMAT_EXTENSIBLE with the PCM subformat).
    """
    chunks = _wav_chunks(data, name)
    fmt = chunks.get(b"fmt ")
    if fmt is None or len(fmt) < 16:
        raise ConfigError(f"media file {name}: WAV has no valid 'fmt ' chunk")
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == 0xFFFE and len(fmt) >= 40 and fmt[26:40] == _PCM_SUBFORMAT_TAIL:
        tag = struct.unpack_from("<H", fmt, 24)[0]
    if tag != 1:
        kind = {3: "IEEE float", 6: "A-law", 7: "μ-law", 0xFFFE: "extensible non-PCM"}
        raise ConfigError(
            f"media file {name}: WAV format {kind.get(tag, f'tag {tag}')}, "
            "need PCM 16-bit mono (convert with: sox in.wav -b 16 -c 1 -e signed out.wav)"
        )
    if channels != 1:
        raise ConfigError(f"media file {name}: WAV has {channels} channels, need mono")
    if bits != 16:
        raise ConfigError(f"media file {name}: WAV has {bits}-bit samples, need 16-bit PCM")
    if not 1000 <= rate <= 192_000:
        raise ConfigError(f"media file {name}: WAV sample rate {rate} Hz is out of range")
    pcm = chunks.get(b"data")
    if not pcm or len(pcm) < 2:
        raise ConfigError(f"media file {name}: WAV has no audio samples")
    if len(pcm) > MAX_FILE_SECONDS * rate * 2:
        raise ConfigError(f"media file {name}: longer than {MAX_FILE_SECONDS} s")
    return np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.int16), rate


def resample(samples: Samples, rate_in: int, rate_out: int) -> Samples:
    """Band-limited resampling by FFT (the signal loops, which is what the FFT assumes)."""
    if rate_in == rate_out:
        return samples.astype(np.int16)
    n_out = max(1, round(len(samples) * rate_out / rate_in))
    spectrum = np.fft.rfft(samples.astype(np.float64))
    keep = min(len(spectrum), n_out // 2 + 1)
    out = np.fft.irfft(spectrum[:keep], n_out) * (n_out / len(samples))
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


# -- the process-wide cache -----------------------------------------------------------------

_CACHE: OrderedDict[tuple[object, ...], EncodedSource] = OrderedDict()


def _cache_key(kind: str, params: Params, codec: Codec, ptime_ms: int) -> tuple[object, ...]:
    identity: tuple[object, ...] = ()
    path = params.get("path")
    if kind == "file" and isinstance(path, str):
        try:
            st = os.stat(path)
            identity = (st.st_size, st.st_mtime_ns)
        except OSError:
            identity = ()
    fmt = (codec.name.upper(), codec.sample_rate)
    return (kind, tuple(sorted(params.items())), identity, fmt, ptime_ms)


def get_source(kind: str, params: Params, codec: Codec, ptime_ms: int) -> EncodedSource:
    """The shared :class:`EncodedSource` for a source; encodes it on first use in the process.

    ``kind`` is ``tone`` (params ``frequency_hz``, optional ``level_dbm0``), ``silence`` or
    ``file`` (param ``path`` to a PCM 16-bit mono WAV). Raises :class:`ConfigError` for bad
    settings. The payload type is not part of the source: one source serves any PT.
    """
    key = _cache_key(kind, params, codec, ptime_ms)
    source = _CACHE.get(key)
    if source is not None:
        _CACHE.move_to_end(key)
        return source
    pcm = synthesise(kind, params, codec, ptime_ms)
    source = EncodedSource(codec, ptime_ms, encode_audio(codec, pcm, ptime_ms))
    _CACHE[key] = source
    if len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return source


def clear_source_cache() -> None:
    """Forget every cached source (tests; a worker that received new media files)."""
    _CACHE.clear()
