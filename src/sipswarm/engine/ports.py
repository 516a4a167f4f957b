"""RTP/RTCP port pool: even RTP ports, RTCP on port + 1 (RFC 3550 §11), over a configured range.

Theory of operation
-------------------
:meth:`PortPool.allocate` walks the even ports of the range round-robin from
where the last allocation stopped (so that a port freed by a call that just
ended is not handed out again at once, while late packets of the old call may
still arrive), skips ports that sipswarm already holds, and binds a UDP socket
on the even port and another on the odd one. A port that another process
holds (``EADDRINUSE``) is skipped. The bound, non-blocking sockets are handed
to the caller, who reads them with ``loop.add_reader``; :meth:`PortPool.release`
returns the pair when the call ends.

Each call leg costs two file descriptors (one under rtcp-mux once the answer
has been applied, see :meth:`PortAllocation.close_rtcp`). With ``ulimit -n``
at 20000 that is about 10000 legs per process; running out of descriptors is
reported as a :class:`~sipswarm.errors.ResourceError` naming the limit.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
from dataclasses import dataclass

from sipswarm.errors import ConfigError, ResourceError

#: RFC 2474 DSCP occupies the upper six bits of the IPv4 TOS octet.
DSCP_SHIFT = 2


@dataclass(slots=True)
class PortAllocation:
    """A bound RTP socket on an even port and, unless closed for rtcp-mux, RTCP on port + 1."""

    port: int
    rtp_sock: socket.socket
    rtcp_sock: socket.socket | None

    @property
    def rtcp_port(self) -> int:
        """The RTCP port (port + 1), whether or not its socket is still open."""
        return self.port + 1

    def close_rtcp(self) -> None:
        """Close the RTCP socket once rtcp-mux (RFC 5761) is negotiated; keeps the port reserved."""
        if self.rtcp_sock is not None:
            self.rtcp_sock.close()
            self.rtcp_sock = None


class PortPool:
    """Even/odd UDP port pairs from ``[low, high]`` on ``host``.

    Call :meth:`allocate` before building an SDP offer or answer (the port goes
    into the m= line), :meth:`release` when the leg ends.
    """

    def __init__(self, low: int, high: int, host: str = "127.0.0.1") -> None:
        if not (1024 <= low < high <= 65535):
            raise ConfigError(
                f"RTP port range must satisfy 1024 <= low < high <= 65535, got {low}-{high}; "
                "pass e.g. port_range=(16384, 32767)"
            )
        first = low + (low & 1)  # RTP on even ports (RFC 3550 §11)
        if first + 1 > high:
            raise ConfigError(f"RTP port range {low}-{high} holds no even/odd port pair")
        self.low = low
        self.high = high
        self.host = host
        self._ports = range(first, high, 2)
        self._cursor = 0
        self._in_use: set[int] = set()
        self.foreign_skips = 0

    @property
    def capacity(self) -> int:
        """Number of port pairs in the range."""
        return len(self._ports)

    @property
    def in_use(self) -> int:
        """Pairs currently allocated by this pool."""
        return len(self._in_use)

    def allocate(self) -> PortAllocation:
        """Bind the next free even/odd pair; raise ResourceError when the range is exhausted."""
        n = len(self._ports)
        for _ in range(n):
            port = self._ports[self._cursor]
            self._cursor = (self._cursor + 1) % n
            if port in self._in_use:
                continue
            alloc = self._bind_pair(port)
            if alloc is not None:
                self._in_use.add(port)
                return alloc
            self.foreign_skips += 1
        raise ResourceError(
            f"no free RTP port pair in {self.low}-{self.high} on {self.host}: "
            f"{len(self._in_use)} of {n} pairs held by sipswarm, the rest by other processes; "
            f"widen the port range (e.g. {self.low}-{min(65535, self.high + 2 * n)}) "
            "or run fewer concurrent calls per worker"
        )

    def probe(self) -> str | None:
        """None if a pair outside this pool's own could be bound now, else why not.

        Binds and closes at most one pair (the first free one): cheap unless the
        whole range is held by other processes, which is what it detects.
        """
        for port in self._ports:
            if port in self._in_use:
                continue
            alloc = self._bind_pair(port)
            if alloc is not None:
                alloc.rtp_sock.close()
                alloc.close_rtcp()
                return None
        return (
            f"no free RTP port pair in {self.low}-{self.high} on {self.host}"
            f" ({len(self._in_use)} held by sipswarm, the rest by other processes);"
            " widen RTP_PORT_RANGE or free the ports"
        )

    def release(self, alloc: PortAllocation) -> None:
        """Close both sockets and return the pair to the pool (stop reading them first)."""
        alloc.rtp_sock.close()
        alloc.close_rtcp()
        self._in_use.discard(alloc.port)

    def _bind_pair(self, port: int) -> PortAllocation | None:
        rtp = self._bind(port)
        if rtp is None:
            return None
        rtcp = self._bind(port + 1)
        if rtcp is None:
            rtp.close()
            return None
        return PortAllocation(port, rtp, rtcp)

    def _bind(self, port: int) -> socket.socket | None:
        """A non-blocking UDP socket bound to ``port``, or None if someone else holds it."""
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                raise ResourceError(
                    f"out of file descriptors opening RTP port {port} ({self.in_use} legs open, "
                    "2 descriptors each); raise `ulimit -n` or run fewer calls per process"
                ) from exc
            raise
        try:
            sock.setblocking(False)
            sock.bind((self.host, port))
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return None
            raise
        return sock


def set_dscp(sock: socket.socket, dscp: int) -> None:
    """Mark every packet of ``sock`` with ``dscp`` (0-63; EF = 46) through IP_TOS."""
    if not 0 <= dscp <= 63:
        raise ConfigError(f"media.dscp must be 0-63, got {dscp} (46 = EF for voice)")
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, dscp << DSCP_SHIFT)


class _SockaddrUnspec(ctypes.Structure):
    """A ``struct sockaddr`` whose family is AF_UNSPEC (0): ``connect`` to it dissolves."""

    _fields_ = (("family", ctypes.c_ushort), ("data", ctypes.c_char * 14))


_libc = ctypes.CDLL(None, use_errno=True)


def disconnect_udp(sock: socket.socket) -> None:
    """Dissolve a connected UDP socket's association (``connect(AF_UNSPEC)``, POSIX/Linux).

    Python's ``socket.connect`` cannot pass AF_UNSPEC, hence libc. The socket
    keeps its explicitly bound port (Linux keeps a port that ``bind`` chose) and
    receives from every source again. Raises OSError if the call fails.
    """
    addr = _SockaddrUnspec(socket.AF_UNSPEC, b"")
    if _libc.connect(sock.fileno(), ctypes.byref(addr), ctypes.sizeof(addr)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
