"""Both implementations of the RTP hot path, for tests that must hold for each.

``impl`` is "python" (the pure-Python bases, always) or "c" (the C bases of
``sipswarm._rtpcore``, built even when ``SIPSWARM_NATIVE=0`` keeps the engine
on Python; skipped only when the extension did not build, which
tests/media/test_native.py turns into a failure under ``SIPSWARM_REQUIRE_NATIVE=1``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from sipswarm._native import rebase
from sipswarm.media.rtp import PyRtpPacketWriter, RtpPacketWriter
from sipswarm.media.stats import (
    PyRtpReceiveStats,
    PyRtpSendStats,
    RtpReceiveStats,
    RtpSendStats,
)


def _extension() -> ModuleType | None:
    try:
        return importlib.import_module("sipswarm._rtpcore")
    except ImportError:
        return None


EXT = _extension()


def _c_classes() -> dict[str, type]:
    if EXT is None:
        return {}
    return {
        "recv": rebase(RtpReceiveStats, EXT.RecvBase, "CRtpReceiveStats"),
        "send": rebase(RtpSendStats, EXT.SendBase, "CRtpSendStats"),
        "writer": rebase(RtpPacketWriter, EXT.WriterBase, "CRtpPacketWriter"),
    }


CLASSES: dict[str, dict[str, type]] = {
    "python": {"recv": PyRtpReceiveStats, "send": PyRtpSendStats, "writer": PyRtpPacketWriter},
    "c": _c_classes(),
}


@pytest.fixture(params=["python", "c"])
def impl(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if not CLASSES[name]:
        pytest.skip("sipswarm._rtpcore did not build (see tests/media/test_native.py)")
    return name


@pytest.fixture
def recv_cls(impl: str) -> type[RtpReceiveStats]:
    return CLASSES[impl]["recv"]


@pytest.fixture
def send_cls(impl: str) -> type[RtpSendStats]:
    return CLASSES[impl]["send"]


@pytest.fixture
def writer_cls(impl: str) -> type[RtpPacketWriter]:
    return CLASSES[impl]["writer"]
