"""SIP core: sans-I/O transactions, dialogs, digest auth and user-agent flows.

Bytes and ``now`` go in; events and bytes come out. Nothing here imports
asyncio, socket, time or random (tests/test_layering.py checks it).
"""
