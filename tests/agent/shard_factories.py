"""Backend factories that shard processes import by path in tests/agent/test_shards.py.

They run the scripted backend of the link tests inside real shard processes,
so the process plumbing (split, merge, death) is tested on its own; the
end-to-end tests run the real engine in the shards.
"""

from __future__ import annotations

from sipswarm.agent.backend import EmitItem
from sipswarm.agent.config import AgentConfig

from .scripted_backend import Script, ScriptedBackend


def short(config: AgentConfig, emit: EmitItem) -> ScriptedBackend:
    """Every endpoint succeeds after 0.6 s, with metrics every 0.2 s."""
    return ScriptedBackend(config, emit, Script(hold_s=0.6, metrics_every_s=0.2))


def endless(config: AgentConfig, emit: EmitItem) -> ScriptedBackend:
    """Endpoints run until cancelled (or until their shard dies)."""
    return ScriptedBackend(config, emit, Script(hold_s=None, metrics_every_s=0.2))
