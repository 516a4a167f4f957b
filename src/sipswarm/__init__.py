"""sipswarm: a distributed SIP/RTP load generator.

Layers (see ARCHITECTURE in the docs): ``sip`` and ``media`` are sans-I/O
protocol cores; ``engine`` adapts them to asyncio sockets and clocks;
``agent`` speaks the controller protocol; ``controller`` is the reference
controller; ``cli`` wires commands.
"""

from __future__ import annotations

__version__ = "0.1.0"
USER_AGENT = f"sipswarm/{__version__}"
