"""E-model (ITU-T G.107) against Annex B points and values computed by hand."""

from __future__ import annotations

import itertools
import math

import pytest

from sipswarm.errors import ConfigError
from sipswarm.media.emodel import (
    CODEC_IMPAIRMENTS,
    CodecImpairment,
    delay_impairment,
    effective_equipment_impairment,
    impairment_for,
    mos_from_r,
    r_factor,
)


def test_default_connection_is_93_2() -> None:
    r = r_factor("PCMU", 0.0, 0.0)
    assert round(r, 1) == 93.2
    assert round(mos_from_r(r), 2) == 4.41


# G.107 Annex B / G.109: R -> MOS; 80 -> 4.03 in the table is the cubic's 4.024 rounded up.
@pytest.mark.parametrize(
    ("r", "mos"),
    [(93.2, 4.41), (90, 4.34), (80, 4.03), (70, 3.60), (60, 3.10), (50, 2.58)],
)
def test_mos_annex_b_points(r: float, mos: float) -> None:
    assert mos_from_r(r) == pytest.approx(mos, abs=0.01)


def test_mos_limits() -> None:
    assert mos_from_r(-3.0) == 1.0
    assert mos_from_r(0.0) == 1.0
    assert mos_from_r(3.0) == 1.0  # the cubic dips below 1 here
    assert mos_from_r(100.0) == 4.5
    assert mos_from_r(130.0) == 4.5
    rs = [x / 2 for x in range(0, 201)]
    mos = [mos_from_r(r) for r in rs]
    assert all(a <= b for a, b in itertools.pairwise(mos))


def test_g711_loss_by_hand() -> None:
    r0 = r_factor("PCMU", 0.0, 0.0)
    # Ie,eff = 0 + 95 * 1 / (1 + 4.3) without PLC, 95 * 1 / (1 + 25.1) with it
    assert r_factor("PCMU", 1.0, 0.0, plc=False) == pytest.approx(r0 - 95 / 5.3)
    assert r_factor("PCMA", 1.0, 0.0) == pytest.approx(r0 - 95 / 26.1)
    # bursty loss: BurstR 2 -> 95 * 2 / (2/2 + 25.1)
    assert r_factor("PCMU", 2.0, 0.0, burst_ratio=2.0) == pytest.approx(r0 - 190 / 26.1)


def test_g729_codec_impairment_by_hand() -> None:
    r0 = r_factor("PCMU", 0.0, 0.0)
    assert r_factor("G729", 0.0, 0.0) == pytest.approx(r0 - 11)
    # Ie,eff = 11 + 84 * 3 / (3 + 19)
    assert r_factor("G729", 3.0, 0.0) == pytest.approx(r0 - 11 - 84 * 3 / 22)


def test_profile_overrides_table() -> None:
    r0 = r_factor("PCMU", 0.0, 0.0)
    custom = CodecImpairment(ie=5.0, bpl=10.0, source="test")
    assert r_factor("anything", 1.0, 0.0, profile=custom) == pytest.approx(r0 - (5 + 90 * 1 / 11))


def test_idd_formula_by_hand() -> None:
    # Idd at Ta = 400 ms: X = log2(4) = 2
    x = 2.0
    idd = 25 * ((1 + x**6) ** (1 / 6) - 3 * (1 + (x / 3) ** 6) ** (1 / 6) + 2)
    # Idte at T = 400 ms: TERV, Roe = -1.5 (No - RLR), Re = 80 + 2.5 (TERV - 14)
    terv = 65 - 40 * math.log10(41 / (1 + 400 / 150))
    no = -61.18  # G.107 default No (dBm0p)
    roe = -1.5 * (no - 2)
    re = 80 + 2.5 * (terv - 14)
    idte = (roe - re) / 2 + math.sqrt((roe - re) ** 2 / 4 + 100) - 1
    rle = 10.5 * 117 * (800 + 1) ** -0.25
    idle = (94.77 - rle) / 2 + math.sqrt((94.77 - rle) ** 2 / 4 + 169)
    assert delay_impairment(400.0) == pytest.approx(idd + idte + idle, abs=0.05)


def test_delay_up_to_100ms_has_no_pure_delay_term() -> None:
    # only the (small) echo terms below 100 ms
    assert delay_impairment(0.0) == pytest.approx(0.15, abs=0.01)
    assert delay_impairment(100.0) < 3.0


def test_monotonic_in_loss_and_delay() -> None:
    losses = [0.0, 0.5, 1, 2, 5, 10, 20, 50]
    rs = [r_factor("PCMU", p, 20.0) for p in losses]
    assert all(a > b for a, b in itertools.pairwise(rs))
    delays = [0.0, 50, 100, 150, 200, 300, 400, 600]
    rd = [r_factor("PCMU", 0.0, d) for d in delays]
    assert all(a > b for a, b in itertools.pairwise(rd))
    assert r_factor("PCMU", 2.0, 0.0, burst_ratio=3.0) < r_factor("PCMU", 2.0, 0.0)


def test_bad_inputs() -> None:
    with pytest.raises(ConfigError, match="no impairment values for codec 'iLBC'"):
        r_factor("iLBC", 0.0, 0.0)
    with pytest.raises(ConfigError, match="finite"):
        r_factor("PCMU", math.nan, 0.0)
    with pytest.raises(ConfigError, match="burst_ratio"):
        r_factor("PCMU", 1.0, 0.0, burst_ratio=0.0)
    # out-of-range loss from the network is clamped, not an error
    assert r_factor("PCMU", -4.0, 0.0) == r_factor("PCMU", 0.0, 0.0)
    assert effective_equipment_impairment(0.0, 4.3, 250.0) == effective_equipment_impairment(
        0.0, 4.3, 100.0
    )


def test_table_names_and_sources() -> None:
    assert impairment_for("pcmu") is impairment_for("G.711")
    assert impairment_for("opus").source.startswith("non-normative")
    assert all(imp.source for imp in CODEC_IMPAIRMENTS.values())
