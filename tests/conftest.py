"""Shared fixtures: the real peers of tests/peers (see its docstring)."""

from __future__ import annotations

pytest_plugins = ["tests.peers.fixtures"]
