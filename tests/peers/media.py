"""Media files for peers: a headerless G.711 u-law tone for sipp's rtp_stream."""

from __future__ import annotations

import math
from pathlib import Path


def _ulaw(sample: int) -> int:
    """16-bit linear PCM -> G.711 u-law (ITU-T G.711, bias 0x84, clip 32635)."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent = 7
    while exponent > 0 and not magnitude & (0x4000 >> (7 - exponent)):
        exponent -= 1
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def write_ulaw_tone(path: Path, seconds: float = 1.0, hz: float = 440.0) -> Path:
    """Write ``seconds`` of a sine at ``hz`` as raw u-law, 8 kHz (sipp plays it looped)."""
    count = int(8000 * seconds)
    samples = (int(8000 * math.sin(2 * math.pi * hz * n / 8000)) for n in range(count))
    path.write_bytes(bytes(_ulaw(s) for s in samples))
    return path
