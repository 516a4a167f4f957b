"""Type stub of the C extension ``sipswarm._rtpcore`` (src/sipswarm/_rtpcore.c)."""

from collections.abc import Callable

class RecvBase:
    ssrc: int | None
    last_arrival: float | None
    _window: int
    _max_seq: int
    _probation: int
    _cycles: int
    _unique: int
    packets_received: int
    bytes_received: int
    _jitter_valid: bool
    jitter: float
    jitter_max: float
    _last_ts: int
    _last_arrival_ts: float
    clock_rate: int
    invalid_packets: int
    def receive_rtp(self, data: bytes | bytearray | memoryview, now: float) -> int: ...

class WriterBase:
    _b1: int
    _b1_next: int
    sequence: int
    ssrc: int
    timestamp: int
    timestamp_step: int
    def write(self, payload: bytes) -> bytes: ...

class SendBase:
    packets_sent: int
    bytes_sent: int
    send_errors: int

class Sender:
    fd: int
    frame_index: int
    last_due: float
    def __init__(
        self, writer: WriterBase, stats: SendBase, fallback: Callable[[float], None]
    ) -> None: ...
    def __call__(self, due: float) -> None: ...
    def set_source(self, buffer: bytes | None, frame_bytes: int, frames: int) -> bool: ...

class Poller:
    @property
    def packets(self) -> int: ...
    @property
    def registered(self) -> int: ...
    def __init__(self, max_events: int = 512) -> None: ...
    def register(
        self,
        fd: int,
        stats: RecvBase,
        dtmf_pt: int,
        on_packet: Callable[[bytes], None],
        on_error: Callable[[], None],
    ) -> None: ...
    def unregister(self, fd: int) -> bool: ...
    def poll(self) -> int: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...
