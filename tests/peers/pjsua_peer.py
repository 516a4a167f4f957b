"""pjsua2 as an independent SIP UA for tests; run as a subprocess, one JSON object per line.

    python tests/peers/pjsua_peer.py answer --calls 1 [--code 200] [--hold 2]
    python tests/peers/pjsua_peer.py call sip:service@127.0.0.1:5070 --hold 2
        [--user 1000 --password secret1000 --domain 127.0.0.1]   # digest credentials
        [--register sip:127.0.0.1:5060]                           # register first (answer)

Events on stdout: ``{"event": "ready", "sip_port": N}`` once listening,
``{"event": "state", "call": i, "state": "CONFIRMED", ...}`` on every call
state change, ``{"event": "registered", "code": 200}``, and per finished
call ``{"event": "call_end", "call": i, "last_status": 200, "connected":
true, "rtp_rx_packets": n, "rtp_tx_packets": n, "rtp_rx_loss": n}``,
finally ``{"event": "done"}``. The whole run is bounded by ``--max-time``.

pjsua2's wheel aborts the process on misuse and allows 4 calls and 8
accounts, so: main-thread mode (``threadCnt=0``, ``mainThreadOnly``) pumped
by ``libHandleEvents``, the null audio device, a tone generator as the RTP
source (VAD off so RTP flows steadily), RTP counters sampled while the call
is up (the stream is gone at DISCONNECTED), each Call wrapper dropped after
DISCONNECTED outside its own callback, and everything destroyed in order.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import pjsua2 as pj

LOOPBACK = "127.0.0.1"


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


class PeerCall(pj.Call):  # type: ignore[misc]
    """One call: reports its states, samples RTP counters, plays a tone once media is up."""

    def __init__(self, peer: Peer, acc: pj.Account, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(acc, call_id)
        self.peer = peer
        self.index = peer.next_index()
        self.connected_at: float | None = None
        self.rtp = {"rtp_rx_packets": 0, "rtp_tx_packets": 0, "rtp_rx_loss": 0}
        self.tone: pj.ToneGenerator | None = None
        self.disconnected = False

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        info = self.getInfo()
        emit(event="state", call=self.index, state=info.stateText, code=info.lastStatusCode)
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED:
            self.connected_at = time.monotonic()
        if info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.disconnected = True
            connected = self.connected_at is not None
            emit(event="call_end", call=self.index, last_status=info.lastStatusCode,
                 reason=info.lastReason, connected=connected, **self.rtp)  # fmt: skip
            self.peer.finished.append(self)

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        info = self.getInfo()
        for i, media in enumerate(info.media):
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                audio = self.getAudioMedia(i)
                if self.tone is None:
                    self.tone = pj.ToneGenerator()
                    self.tone.createToneGenerator(8000, 1)
                    tone = pj.ToneDesc()
                    tone.freq1, tone.freq2, tone.on_msec, tone.off_msec = 440, 0, 1000, 0
                    tones = pj.ToneDescVector()
                    tones.append(tone)
                    self.tone.play(tones, True)
                self.tone.startTransmit(audio)

    def sample_rtp(self) -> None:
        if self.disconnected or self.connected_at is None:
            return
        try:
            stat = self.getStreamStat(0).rtcp
        except pj.Error:
            return
        self.rtp = {
            "rtp_rx_packets": int(stat.rxStat.pkt),
            "rtp_tx_packets": int(stat.txStat.pkt),
            "rtp_rx_loss": int(stat.rxStat.loss),
        }


class PeerAccount(pj.Account):  # type: ignore[misc]
    def __init__(self, peer: Peer) -> None:
        super().__init__()
        self.peer = peer

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        if len(self.peer.calls) >= 4:  # the wheel's hard limit: refuse rather than abort
            return
        call = PeerCall(self.peer, self, prm.callId)
        self.peer.calls.append(call)
        op = pj.CallOpParam()
        op.statusCode = self.peer.args.code
        call.answer(op)

    def onRegState(self, prm: pj.OnRegStateParam) -> None:
        emit(event="registered", code=prm.code, expiration=prm.expiration)


class Peer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.calls: list[PeerCall] = []
        self.finished: list[PeerCall] = []
        self.ended = 0
        self._index = 0

    def next_index(self) -> int:
        self._index += 1
        return self._index


def make_endpoint(args: argparse.Namespace) -> tuple[pj.Endpoint, int]:
    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.uaConfig.maxCalls = 4
    cfg.uaConfig.userAgent = "sipswarm-test-pjsua"
    cfg.logConfig.level = args.log_level
    cfg.logConfig.consoleLevel = 0  # stdout is for JSON only
    if args.log_file:
        cfg.logConfig.filename = args.log_file
    cfg.medConfig.noVad = True
    cfg.medConfig.hasIoqueue = True
    ep.libInit(cfg)
    ep.audDevManager().setNullDev()
    tcfg = pj.TransportConfig()
    tcfg.port = args.port
    tcfg.boundAddress = LOOPBACK
    tcfg.publicAddress = LOOPBACK
    tid = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
    ep.libStart()
    port = int(ep.transportGetInfo(tid).localName.rsplit(":", 1)[1])
    for codec in ep.codecEnum2():
        ep.codecSetPriority(codec.codecId, 255 if codec.codecId.startswith("PCMU/") else 0)
    return ep, port


def make_account(peer: Peer, sip_port: int) -> PeerAccount:
    args = peer.args
    acfg = pj.AccountConfig()
    user = args.user or "pjsua"
    acfg.idUri = f"sip:{user}@{args.domain or f'{LOOPBACK}:{sip_port}'}"
    if args.register:
        acfg.regConfig.registrarUri = args.register
        acfg.regConfig.timeoutSec = 300
    else:
        acfg.regConfig.registerOnAdd = False
    if args.user and args.password:
        acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", args.user, 0, args.password))
    if args.srtp:  # SDES-SRTP (RFC 4568) required, offered/accepted over plain UDP signalling
        acfg.mediaConfig.srtpUse = pj.PJMEDIA_SRTP_MANDATORY
        acfg.mediaConfig.srtpSecureSignaling = 0
    mt = acfg.mediaConfig.transportConfig
    mt.port = args.rtp_port
    mt.boundAddress = LOOPBACK
    mt.publicAddress = LOOPBACK
    acc = PeerAccount(peer)
    acc.create(acfg)
    return acc


def pump(ep: pj.Endpoint, peer: Peer, deadline: float, done: Any) -> None:
    """Handle events until ``done()`` or the deadline; hang up calls held long enough."""
    while time.monotonic() < deadline and not done():
        ep.libHandleEvents(20)
        now = time.monotonic()
        for call in list(peer.calls):
            call.sample_rtp()
            held = call.connected_at is not None and now - call.connected_at >= peer.args.hold
            if held and peer.args.hold > 0 and not call.disconnected:
                call.hangup(pj.CallOpParam(True))
        for call in peer.finished:  # drop wrappers outside their own callbacks
            peer.calls.remove(call)
            peer.ended += 1
            if call.tone is not None:
                call.tone = None
        peer.finished.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["answer", "call"])
    parser.add_argument("uri", nargs="?", help="call mode: the URI to call")
    parser.add_argument("--port", type=int, default=0, help="SIP UDP port (0 = any)")
    parser.add_argument("--rtp-port", type=int, default=0, help="RTP port (0 = any)")
    parser.add_argument("--calls", type=int, default=1, help="answer mode: calls to wait for")
    parser.add_argument("--code", type=int, default=200, help="answer mode: final response")
    parser.add_argument("--hold", type=float, default=0, help="hang up after N s (0 = wait)")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--domain")
    parser.add_argument("--register", help="registrar URI to register with first")
    parser.add_argument("--max-time", type=float, default=30)
    parser.add_argument("--srtp", action="store_true", help="require SDES-SRTP (RTP/SAVP)")
    parser.add_argument("--log-file")
    parser.add_argument("--log-level", type=int, default=0)
    args = parser.parse_args(argv)
    if args.mode == "call" and not args.uri:
        parser.error("call mode needs a URI")
    deadline = time.monotonic() + args.max_time
    peer = Peer(args)
    ep, sip_port = make_endpoint(args)
    acc = make_account(peer, sip_port)
    emit(event="ready", sip_port=sip_port)
    if args.mode == "call":
        call = PeerCall(peer, acc)
        peer.calls.append(call)
        call.makeCall(args.uri, pj.CallOpParam(True))
        pump(ep, peer, deadline, lambda: peer.ended >= 1)
    else:
        pump(ep, peer, deadline, lambda: peer.ended >= args.calls)
    timed_out = time.monotonic() >= deadline
    for call in list(peer.calls):  # bounded: hang up whatever is still up
        if not call.disconnected:
            call.hangup(pj.CallOpParam(True))
    pump(ep, peer, time.monotonic() + 2, lambda: not peer.calls)
    emit(event="done", timed_out=timed_out, calls_ended=peer.ended)
    peer.calls.clear()
    acc.shutdown()
    del acc
    ep.libDestroy()
    return 1 if timed_out else 0


if __name__ == "__main__":
    sys.exit(main())
