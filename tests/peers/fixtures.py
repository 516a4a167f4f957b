"""pytest fixtures over tests/peers, registered by tests/conftest.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .kamailio import Kamailio, KamailioOptions, kamailio_available, start_kamailio


@pytest.fixture(scope="session")
def kamailio() -> Iterator[Kamailio]:
    """One Kamailio for the whole session (auth on, TLS when available). Do not stop it."""
    if not kamailio_available():
        pytest.skip("kamailio not installed")
    kam = start_kamailio()
    yield kam
    kam.stop()


@pytest.fixture
def kamailio_factory() -> Iterator[Callable[[KamailioOptions], Kamailio]]:
    """Start Kamailios with custom options; all are stopped at the end of the test."""
    if not kamailio_available():
        pytest.skip("kamailio not installed")
    started: list[Kamailio] = []

    def start(options: KamailioOptions) -> Kamailio:
        kam = start_kamailio(options)
        started.append(kam)
        return kam

    yield start
    for kam in started:
        kam.stop()
