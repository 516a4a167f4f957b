"""Which RTP hot path runs: the C extension ``sipswarm._rtpcore`` or the pure-Python fallback.

``core`` is the extension module, or None when it did not build (``setup.py`` makes it
optional) or when ``SIPSWARM_NATIVE=0`` is set (A/B runs, tests of the fallback). Both
paths compute the same figures; tests run the statistics and the sender against both.
``SIPSWARM_REQUIRE_NATIVE=1`` (set by scripts/test.sh) makes tests/media/test_native.py
fail when the extension is missing, so CI notices a broken build. Read :data:`NATIVE`
(re-exported as ``sipswarm.engine.media_engine.NATIVE``) to know which one is active.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TypeVar, cast

__all__ = ["IMPORT_ERROR", "NATIVE", "core", "rebase"]

_T = TypeVar("_T")

IMPORT_ERROR: str | None = None
core: ModuleType | None = None
if os.environ.get("SIPSWARM_NATIVE", "1").strip() not in ("0", "false", "no", "off"):
    try:
        core = importlib.import_module("sipswarm._rtpcore")
    except ImportError as exc:  # no compiler at install time: the Python path runs
        IMPORT_ERROR = str(exc)
        core = None
else:
    IMPORT_ERROR = "disabled by SIPSWARM_NATIVE=0"

#: True when the C hot path is active in this process.
NATIVE: bool = core is not None


def rebase(cls: type[_T], base: type, name: str) -> type[_T]:
    """``cls`` rebuilt on ``base`` instead of its own base: the same methods, its own slots.

    How the always-pure-Python twins of the classes with a C base are made (and the
    reverse), so that one class body serves both paths and tests can run either.
    """
    slots = set(getattr(cls, "__slots__", ()))
    namespace = {
        key: value
        for key, value in vars(cls).items()
        if key not in slots and key not in ("__dict__", "__weakref__")
    }
    namespace["__qualname__"] = name
    return cast(type[_T], type(name, (base,), namespace))
