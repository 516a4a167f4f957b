"""ITU-T G.107 E-model: transmission rating R from codec, packet loss and delay; MOS from R.

Theory of operation
-------------------
G.107 §7 rates a connection as ``R = Ro - Is - Id - Ie,eff + A``:

* ``Ro`` (basic signal-to-noise ratio) and ``Is`` (simultaneous impairments: loudness,
  sidetone, quantisation) depend only on terminal and circuit parameters. A load generator has
  no terminals, so every parameter keeps its G.107 Table 3 default; :data:`DEFAULTS` holds them
  and the formulas below compute Ro = 94.77 and Is = 1.43 from them (not hard-coded numbers).
* ``Id`` (delay impairment) = Idte (talker echo) + Idle (listener echo) + Idd (pure delay).
  We measure one thing, the one-way delay, so ``T = Ta = one_way_delay_ms`` and ``Tr = 2 Ta``
  (the echo paths run over the same network). Idd is 0 up to Ta = 100 ms, and above::

      X = log10(Ta / 100) / log10(2)
      Idd = 25 * ((1 + X**6) ** (1/6) - 3 * (1 + (X/3)**6) ** (1/6) + 2)

* ``Ie,eff`` (equipment impairment, G.107 §7.4) = ``Ie + (95 - Ie) * Ppl / (Ppl/BurstR + Bpl)``
  with ``Ppl`` the loss in percent and ``BurstR`` = 1 for random loss, > 1 for bursty loss.
  ``Ie`` and ``Bpl`` are codec properties from G.113 Appendix I (:data:`CODEC_IMPAIRMENTS`).
* ``A`` (advantage factor) is 0: a wired or managed VoIP connection.

With every default and no loss or delay, R = 93.2 and MOS = 4.41 (G.107 Annex B).

All R values are on the narrowband G.107 scale (0-100), one scale for every codec, so that
``r_factor`` and ``mos`` in the metrics stay comparable across calls. A wideband codec cannot
score above G.711 on this scale (G.107.1 has a separate scale up to 129 for that).

Call :func:`r_factor` once per metrics interval with the receive statistics, then
:func:`mos_from_r`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sipswarm.errors import ConfigError

__all__ = [
    "CODEC_IMPAIRMENTS",
    "DEFAULTS",
    "CodecImpairment",
    "EModelParameters",
    "delay_impairment",
    "effective_equipment_impairment",
    "impairment_for",
    "mos_from_r",
    "r_factor",
]


@dataclass(frozen=True, slots=True)
class CodecImpairment:
    """Equipment impairment ``ie`` and packet-loss robustness ``bpl`` of a codec (G.113 App. I).

    ``bpl_without_plc`` is the robustness when the receiver conceals nothing (only G.711 has a
    separate value; other codecs' decoders always conceal). ``source`` says where the numbers
    come from, so a report can show whether they are normative.
    """

    ie: float
    bpl: float
    bpl_without_plc: float | None = None
    source: str = ""


# G.113 (11/2007) Appendix I, Tables I.1 and I.3 (random loss), narrowband scale.
CODEC_IMPAIRMENTS: dict[str, CodecImpairment] = {
    "G711": CodecImpairment(
        ie=0.0,
        bpl=25.1,
        bpl_without_plc=4.3,
        source="G.113 App. I: G.711 Ie 0; Bpl 25.1 with G.711 App. I PLC, 4.3 without",
    ),
    "G729": CodecImpairment(
        ie=11.0,
        bpl=19.0,
        source="G.113 App. I: G.729A + VAD, Ie 11, Bpl 19.0 (the G.729 entry with a Bpl)",
    ),
    "G722": CodecImpairment(
        ie=0.0,
        bpl=25.1,
        source=(
            "Ie 0 on the narrowband scale (G.113 gives G.722 at 64 kbit/s Ie,wb 13 on the "
            "G.107.1 wideband scale where G.711 is 36, i.e. no worse than G.711 here); Bpl "
            "assumed equal to G.711 with PLC (G.722 App. III/IV concealment): planning value"
        ),
    ),
    "OPUS": CodecImpairment(
        ie=0.0,
        bpl=25.1,
        source="non-normative: no ITU-T values for Opus; assumed like G.711 with PLC, override",
    ),
}

_ALIASES = {
    "PCMU": "G711",
    "PCMA": "G711",
    "G711U": "G711",
    "G711A": "G711",
    "G729A": "G729",
    "G7221": "G722",
}


def impairment_for(codec: str) -> CodecImpairment:
    """The table entry for an SDP encoding name (``PCMU``, ``G722``, ``opus``...)."""
    key = codec.upper().replace(".", "").replace("-", "")
    key = _ALIASES.get(key, key)
    try:
        return CODEC_IMPAIRMENTS[key]
    except KeyError:
        known = ", ".join(sorted(set(CODEC_IMPAIRMENTS) | set(_ALIASES)))
        raise ConfigError(
            f"E-model has no impairment values for codec {codec!r} (known: {known}); "
            "pass profile=CodecImpairment(ie=..., bpl=...) for it"
        ) from None


@dataclass(frozen=True, slots=True)
class EModelParameters:
    """G.107 Table 3 default values (loudness ratings in dB, noise in dBm0p/dB(A), T in ms)."""

    slr: float = 8.0  # send loudness rating
    rlr: float = 2.0  # receive loudness rating
    stmr: float = 15.0  # sidetone masking rating
    lstr: float = 18.0  # listener sidetone rating
    ds: float = 3.0  # D-value of the telephone, send side
    telr: float = 65.0  # talker echo loudness rating
    wepl: float = 110.0  # weighted echo path loss
    qdu: float = 1.0  # quantising distortion units
    nc: float = -70.0  # circuit noise referred to the 0 dBr point
    nfor: float = -64.0  # noise floor at the receive side
    ps: float = 35.0  # room noise at the send side, dB(A)
    pr: float = 35.0  # room noise at the receive side, dB(A)
    a: float = 0.0  # advantage factor


DEFAULTS = EModelParameters()


def _noise_no(p: EModelParameters) -> float:
    """G.107 §7.2: total noise No from circuit, room and noise-floor sources (dBm0p)."""
    olr = p.slr + p.rlr
    nos = p.ps - p.slr - p.ds - 100 + 0.004 * (p.ps - olr - p.ds - 14) ** 2
    pre = p.pr + 10 * math.log10(1 + 10 ** ((10 - p.lstr) / 10))
    nor = p.rlr - 121 + pre + 0.008 * (pre - 35) ** 2
    nfo = p.nfor + p.rlr
    return 10 * math.log10(sum(10 ** (n / 10) for n in (p.nc, nos, nor, nfo)))


def _basic_ro(p: EModelParameters) -> float:
    """G.107 §7.2: Ro = 15 - 1.5 (SLR + No)."""
    return 15 - 1.5 * (p.slr + _noise_no(p))


def _simultaneous_is(p: EModelParameters, ro: float) -> float:
    """G.107 §7.3: Is = Iolr + Ist + Iq (with T = 0 in STMRo: sidetone only)."""
    xolr = p.slr + p.rlr + 0.2 * (64 + _noise_no(p) - p.rlr)
    iolr = 20 * ((1 + (xolr / 8) ** 8) ** (1 / 8) - xolr / 8)
    stmro = -10 * math.log10(10 ** (-p.stmr / 10) + 10 ** (-p.telr / 10))
    ist = (
        12 * (1 + ((stmro - 13) / 6) ** 8) ** (1 / 8)
        - 28 * (1 + ((stmro + 1) / 19.4) ** 35) ** (1 / 35)
        - 13 * (1 + ((stmro - 3) / 33) ** 13) ** (1 / 13)
        + 29
    )
    q = 37 - 15 * math.log10(p.qdu)
    g = 1.07 + 0.258 * q + 0.0602 * q**2
    y = (ro - 100) / 15 + 46 / 8.4 - g / 9
    z = 46 / 30 - g / 40
    iq = 15 * math.log10(1 + 10**y + 10**z)
    return float(iolr + ist + iq)


def _talker_echo_idte(p: EModelParameters, t: float) -> float:
    """G.107 §7.4: talker echo; below T = 1 ms the echo counts as sidetone (Idte = 0)."""
    if t < 1.0:
        return 0.0
    terv = p.telr - 40 * math.log10((1 + t / 10) / (1 + t / 150)) + 6 * math.exp(-0.3 * t**2)
    roe = -1.5 * (_noise_no(p) - p.rlr)
    re = 80 + 2.5 * (terv - 14)
    return float((roe - re) / 2 + math.sqrt((roe - re) ** 2 / 4 + 100) - 1) * (1 - math.exp(-t))


def _listener_echo_idle(ro: float, p: EModelParameters, tr: float) -> float:
    """G.107 §7.4: listener echo over the round trip Tr."""
    rle = 10.5 * (p.wepl + 7) * math.pow(tr + 1, -0.25)
    return (ro - rle) / 2 + math.sqrt((ro - rle) ** 2 / 4 + 169)


def _pure_delay_idd(ta: float) -> float:
    """G.107 §7.4: absolute delay Ta, no impairment up to 100 ms."""
    if ta <= 100.0:
        return 0.0
    x = math.log10(ta / 100) / math.log10(2)
    return 25 * (math.pow(1 + x**6, 1 / 6) - 3 * math.pow(1 + (x / 3) ** 6, 1 / 6) + 2)


def delay_impairment(one_way_delay_ms: float, params: EModelParameters = DEFAULTS) -> float:
    """Id = Idte + Idle + Idd for a one-way delay (T = Ta = delay, Tr = 2 x delay)."""
    t = max(one_way_delay_ms, 0.0)
    ro = _basic_ro(params)
    return (
        _talker_echo_idte(params, t) + _listener_echo_idle(ro, params, 2 * t) + _pure_delay_idd(t)
    )


def effective_equipment_impairment(
    ie: float, bpl: float, loss_pct: float, burst_ratio: float = 1.0
) -> float:
    """G.107 §7.4: Ie,eff = Ie + (95 - Ie) * Ppl / (Ppl / BurstR + Bpl)."""
    ppl = min(max(loss_pct, 0.0), 100.0)
    return ie + (95 - ie) * ppl / (ppl / burst_ratio + bpl)


_RO = _basic_ro(DEFAULTS)
_IS = _simultaneous_is(DEFAULTS, _RO)


def r_factor(
    codec: str,
    loss_pct: float,
    one_way_delay_ms: float,
    burst_ratio: float = 1.0,
    plc: bool = True,
    profile: CodecImpairment | None = None,
) -> float:
    """Transmission rating R (G.107 §7) for a call leg; feed the result to :func:`mos_from_r`.

    ``loss_pct`` is the packet loss in percent (0-100; clamped), ``one_way_delay_ms`` the
    mouth-to-ear delay (RTT/2 plus packetisation and jitter buffer when known), ``burst_ratio``
    BurstR (1 = random loss). ``plc`` selects G.711's Bpl with or without concealment.
    ``profile`` overrides the codec table (non-normative codecs, site-specific values).
    The result is not clipped: it may be below 0 under heavy loss.
    """
    if not (math.isfinite(loss_pct) and math.isfinite(one_way_delay_ms)):
        raise ConfigError(
            f"r_factor needs finite loss_pct and one_way_delay_ms, got {loss_pct}, "
            f"{one_way_delay_ms}"
        )
    if not (burst_ratio > 0 and math.isfinite(burst_ratio)):
        raise ConfigError(f"r_factor burst_ratio must be > 0 (1 = random loss), got {burst_ratio}")
    imp = profile if profile is not None else impairment_for(codec)
    bpl = imp.bpl if plc or imp.bpl_without_plc is None else imp.bpl_without_plc
    ie_eff = effective_equipment_impairment(imp.ie, bpl, loss_pct, burst_ratio)
    return _RO - _IS - delay_impairment(one_way_delay_ms) - ie_eff + DEFAULTS.a


def mos_from_r(r: float) -> float:
    """Estimated conversational MOS (MOS-CQE) from R, G.107 Annex B, in [1, 4.5].

    The cubic dips slightly below 1 for 0 < R < 6.5; MOS is 1 there, as for R < 0.
    """
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return max(1.0, 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6)
