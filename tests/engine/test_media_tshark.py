"""The same RTP seen by RtpReceiveStats and by tshark's RTP analysis must agree.

Traffic goes A -> lossy FIFO relay -> B and B -> A directly; tshark captures
what arrives at both RTP ports. Packet counts and loss must be equal and the
maximum interarrival jitter of the relayed stream within 5 % of tshark's
(`-z rtp,streams`); the direct stream's sub-millisecond jitter within 0.15 ms.
"""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import signal
from pathlib import Path

import pytest
import uvloop

from sipswarm.engine.media_engine import MediaEngine
from sipswarm.engine.rtp_session import RtpSession
from sipswarm.media.codecs import codec_by_name
from sipswarm.media.sources import get_source
from tests.engine.media_relay import UdpRelay, expected_loss
from tests.engine.test_media_ports_clock import free_even_range

LOCAL = "127.0.0.1"
TSHARK = shutil.which("tshark")
pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (apt-get install tshark)"),
]

# Start time, End time, Src IP, Port, Dst IP, Port, SSRC, Payload, Pkts, Lost (pct),
# Min/Mean/Max Delta, Min/Mean/Max Jitter
STREAM_LINE = re.compile(
    r"^\s*[\d.]+\s+[\d.]+\s+(\S+)\s+(\d+)\s+(\S+)\s+(\d+)\s+(0x[0-9A-Fa-f]+)\s+\S+\s+"
    r"(\d+)\s+(-?\d+)\s+\([^)]*\)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s+([\d.]+)"
)


def policy(i: int) -> float | None:
    """Drop every 10th packet; every 25th stalls the link for 60 ms (no reordering)."""
    if i % 10 == 9:
        return None
    if i % 25 == 12:
        return 0.06
    return 0.0


async def start_capture(
    ports: list[int], probe_port: int, pcap: Path
) -> asyncio.subprocess.Process:
    """Start tshark and return once it demonstrably captures (a probe datagram is printed)."""
    assert TSHARK is not None
    flt = " or ".join(f"udp dst port {p}" for p in [*ports, probe_port])
    proc = await asyncio.create_subprocess_exec(
        TSHARK, "-i", "lo", "-f", flt, "-w", str(pcap), "-P", "-l",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    probe, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(LOCAL, 0))
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(20):
            while True:
                probe.sendto(b"probe", (LOCAL, probe_port))
                try:
                    line = await asyncio.wait_for(proc.stdout.readline(), 0.2)
                except TimeoutError:
                    continue
                if not line:
                    raise RuntimeError("tshark exited before capturing")
                break
    finally:
        probe.close()
    return proc


async def stop_capture(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    proc.send_signal(signal.SIGINT)  # tshark flushes and closes the file on SIGINT
    async with asyncio.timeout(20):
        await proc.stdout.read()
        await proc.wait()


async def tshark_streams(pcap: Path, ports: list[int]) -> dict[int, tuple[int, int, float]]:
    """SSRC -> (packets, lost, max jitter ms) from `tshark -z rtp,streams`."""
    assert TSHARK is not None
    decode = [arg for p in ports for arg in ("-d", f"udp.port=={p},rtp")]
    proc = await asyncio.create_subprocess_exec(
        TSHARK, "-r", str(pcap), *decode, "-q", "-z", "rtp,streams",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    async with asyncio.timeout(30):
        out, _ = await proc.communicate()
    streams = {}
    for line in out.decode().splitlines():
        m = STREAM_LINE.match(line)
        if m:
            streams[int(m.group(5), 16)] = (int(m.group(6)), int(m.group(7)), float(m.group(9)))
    return streams


@pytest.mark.timeout(90)
def test_counts_loss_and_jitter_match_tshark(tmp_path: Path) -> None:
    async def run() -> None:
        low, high = free_even_range(6)
        engine = MediaEngine((low, high - 2), rand=random.Random(11))
        engine.start()
        codec = codec_by_name("PCMU")
        source = get_source("tone", {"frequency_hz": 1000}, codec, 20)
        a: RtpSession = await engine.open_session(codec, 20, source)
        b: RtpSession = await engine.open_session(codec, 20, source)
        relay = UdpRelay((LOCAL, b.local_port), policy, fifo=True)
        relay_port = await relay.open()
        ports = [a.local_port, b.local_port]
        pcap = tmp_path / "rtp.pcapng"
        proc = await start_capture(ports, high, pcap)
        try:
            a.start((LOCAL, relay_port), (LOCAL, b.local_rtcp_port))
            b.start((LOCAL, a.local_port), None)
            await asyncio.sleep(5.0)
            a.set_sending(False)
            b.set_sending(False)
            await asyncio.sleep(0.5)
        finally:
            await stop_capture(proc)
            relay.close()
        streams = await tshark_streams(pcap, ports)
        assert set(streams) == {a.ssrc, b.ssrc}, streams
        for receiver, sender in ((b, a), (a, b)):
            pkts, lost, jitter_max_ms = streams[sender.ssrc]
            recv = receiver.recv_stats
            assert recv.packets_received == pkts
            assert recv.packets_lost == lost
            ours = recv.jitter_max * 1000 / 8000
            if receiver is b:  # through the stalling relay: jitter of several ms, within 5 %
                assert ours == pytest.approx(jitter_max_ms, rel=0.05)
            else:  # direct: sub-ms jitter, where our read time differs from the capture
                # time by the loop's dispatch delay (tens of µs): compare absolutely
                assert ours == pytest.approx(jitter_max_ms, abs=0.15)
        assert b.recv_stats.packets_lost == expected_loss(relay.log) > 0
        assert b.recv_stats.jitter_max * 1000 / 8000 > 5.0  # the stalls show
        await engine.close()

    uvloop.run(run())
