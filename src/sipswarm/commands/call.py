"""``sipswarm call``: one call, the SIP trace and its timings, for people and smoke tests.

    sipswarm call sip:2000@pbx.example.com --registrar pbx.example.com --user 1000 --password s
    sipswarm call sip:service@127.0.0.1:5070            # direct call, no registrar

Runs the same :class:`~sipswarm.engine.engine.EndpointEngine` as the agent,
with one caller endpoint built from the flags and validated like an
``assign`` endpoint. Prints every SIP message as it goes out or comes in,
then the timings (register time, PDD, setup, final code) and the RTP
figures (packets, loss, jitter, MOS). Exit status: 0 when the call was
answered, 1 otherwise (the reason in one line on stderr), 2 for bad flags.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import uvloop
from sipmessage import URI

from sipswarm.agent.assignment import EndpointSpec, validate_assignment
from sipswarm.engine.engine import EndpointEngine, EngineSettings
from sipswarm.engine.tls import TlsSettings
from sipswarm.errors import ConfigError, SipswarmError
from sipswarm.protocol import TraceMode

__all__ = ["ItemPrinter", "configure", "endpoint_spec", "host_port", "main"]

EXIT_ANSWERED, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def configure(parser: argparse.ArgumentParser) -> None:
    """Flags of ``sipswarm call``."""
    parser.add_argument("target", help="SIP URI to call, e.g. sip:2000@pbx.example.com")
    add_common(parser)
    parser.add_argument("--ring-timeout", type=float, default=30.0, help="CANCEL after N s (30)")
    parser.add_argument("--bind", default="0.0.0.0", help="local address (0.0.0.0: any)")
    parser.add_argument("--port", type=int, default=0, help="local SIP port (0: any free)")


def add_common(parser: argparse.ArgumentParser) -> None:
    """Flags ``call`` and ``answer`` share."""
    parser.add_argument("--registrar", metavar="HOST[:PORT]", help="register there first")
    parser.add_argument("--user", help="SIP user (account name)")
    parser.add_argument("--password", help="digest password")
    parser.add_argument("--auth-user", help="digest user name when it differs from --user")
    parser.add_argument("--domain", help="SIP domain of the account (default: registrar host)")
    parser.add_argument(
        "--transport",
        choices=["udp", "tcp", "tls", "ws", "wss"],
        default="udp",
        help="ws/wss: SIP over WebSocket (RFC 7118) to --registrar, as a browser phone",
    )
    parser.add_argument("--ws-path", default="/", help="URL path of the WS/WSS server (/)")
    parser.add_argument("--duration", type=float, default=5.0, help="hang up after N s (5)")
    parser.add_argument("--codecs", default="PCMU,PCMA", help="in order of preference")
    parser.add_argument("--ptime", type=int, default=20, help="packet time, ms (20)")
    parser.add_argument("--tone", type=float, default=440.0, help="tone frequency, Hz (440)")
    parser.add_argument("--rtp-ports", default="20000-39999", help="RTP port range low-high")
    parser.add_argument(
        "--srtp", choices=["off", "sdes"], default="off", help="SRTP keyed by SDP a=crypto (off)"
    )
    parser.add_argument("--tls-verify", choices=["system", "custom", "skip"], default="system")
    parser.add_argument("--ca-file", help="CA bundle for --tls-verify custom")
    parser.add_argument("--quiet", action="store_true", help="no SIP trace, summary only")


def host_port(text: str, what: str) -> tuple[str, int | None]:
    """``host[:port]`` -> (host, port or None); ConfigError names the flag."""
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        return text, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} must be host[:port] with a port 1-65535, got {text!r}")
    return host, int(port)


def rtp_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    if not (low.isdigit() and high.isdigit()):
        raise ConfigError(f"--rtp-ports must be low-high, e.g. 20000-39999, got {text!r}")
    return int(low), int(high)


def endpoint_spec(
    args: argparse.Namespace, role: str, target: str | None, domain_fallback: str
) -> EndpointSpec:
    """One endpoint from the flags, validated exactly like an ``assign`` endpoint."""
    reg_host, reg_port = (
        host_port(args.registrar, "--registrar") if args.registrar else (None, None)
    )
    if args.registrar and not args.user:
        raise ConfigError("--registrar needs --user (and usually --password)")
    transport, proxy = args.transport, None
    if transport in ("ws", "wss") and not args.registrar:
        raise ConfigError(
            f"--transport {transport} needs --registrar: a WebSocket client is reached only "
            "over the connection it registered on (or put ;transport=ws in the target URI)"
        )
    if transport == "ws":  # the assign protocol has no 'ws': a ;transport=ws proxy URI says it
        transport, proxy = "auto", f"sip:{reg_host}:{reg_port or 80};transport=ws"
    raw = {
        "endpoint_id": f"cli/{role}",
        "role": role,
        "account": {
            "username": args.user or ("sipswarm" if role == "caller" else "service"),
            "password": args.password,
            "auth_username": args.auth_user,
        },
        "registrar": {
            "domain": args.domain or reg_host or domain_fallback,
            "host": reg_host,
            "port": reg_port,
            "transport": transport,
            "outbound_proxy": proxy,
            "register": bool(args.registrar),
        },
        "call": {
            "target": target,
            "duration_s": args.duration,
            "ring_timeout_s": getattr(args, "ring_timeout", 30.0),
            "answer_delay_ms": int(getattr(args, "answer_delay", 0.0) * 1000),
        },
        "media": {
            "codecs": [c.strip() for c in args.codecs.split(",") if c.strip()],
            "ptime_ms": args.ptime,
            "source": {"kind": "tone", "frequency_hz": args.tone},
            "srtp": getattr(args, "srtp", "off"),
        },
    }
    assign = {"assignment_id": "cli", "run_id": "cli", "endpoints": [raw]}
    spec, problems = validate_assignment(assign, held_media=())
    if spec is None:
        raise ConfigError("; ".join(p.replace("endpoints[0].", "") for p in problems))
    return spec.endpoints[0]


def engine_settings(args: argparse.Namespace, bind: str, port: int) -> EngineSettings:
    return EngineSettings(
        bind_host=bind,
        sip_port=port,
        rtp_port_range=rtp_range(args.rtp_ports),
        max_endpoints=1000,
        tls=TlsSettings(verify=args.tls_verify, ca_file=args.ca_file),
        ws_path=args.ws_path,
    )


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.0f} ms"


class ItemPrinter:
    """The engine's ``emit`` sink for people: trace, phases, timings, RTP, outcome."""

    def __init__(self, out: TextIO, *, trace: bool = True) -> None:
        self.out = out
        self.trace = trace
        self.media: dict[str, dict[str, Any]] = {}
        self.calls: list[dict[str, Any]] = []
        self.outcomes: list[dict[str, Any]] = []
        self.registered_ms: float | None = None
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "trace": self._trace,
            "phase": self._phase,
            "registration": self._registration,
            "metrics": self._metrics,
            "call": self._call,
            "outcome": self._outcome,
        }

    def __call__(self, item: dict[str, Any]) -> None:
        handler = self._handlers.get(item["kind"])
        if handler is not None:
            handler(item)
        self.out.flush()

    def _clock(self, ts: int) -> str:
        return time.strftime("%H:%M:%S", time.localtime(ts / 1000)) + f".{ts % 1000:03d}"

    def _trace(self, item: dict[str, Any]) -> None:
        if not self.trace:
            return
        arrow = "-->" if item["dir"] == "out" else "<--"
        route = f"{item['local']} {arrow} {item['remote']}"
        self.out.write(f"\n{self._clock(item['ts'])} {item['transport']} {route}\n")
        self.out.write(item["message"].replace("\r\n", "\n").rstrip("\n") + "\n")

    def _phase(self, item: dict[str, Any]) -> None:
        extra = f" at {item['contact']}" if "contact" in item else ""
        self.out.write(f"* {item['endpoint_id']}: {item['phase']}{extra}\n")

    def _registration(self, item: dict[str, Any]) -> None:
        if item["status_code"] and 200 <= item["status_code"] < 300 and self.registered_ms is None:
            self.registered_ms = item["register_ms"]
        expires = item["expires_granted_s"]
        self.out.write(
            f"* REGISTER -> {item['status_code']} in {_ms(item['register_ms'])}"
            + (f", expires {expires} s\n" if expires is not None else "\n")
        )

    def _metrics(self, item: dict[str, Any]) -> None:
        for entry in item["endpoints"]:
            if "recv" in entry:
                self.media[entry["endpoint_id"]] = entry

    def _call(self, item: dict[str, Any]) -> None:
        self.calls.append(item)
        w = self.out.write
        w(f"\ncall {item['endpoint_id']} ({item['direction']}): {item['final_code']} "
          f"{item['result']}\n")  # fmt: skip
        w(f"  register {_ms(self.registered_ms)}  pdd {_ms(item['pdd_ms'])}  ringing "
          f"{_ms(item['ttr_ms'])}  setup {_ms(item['setup_ms'])}  first media "
          f"{_ms(item['ttfm_ms'])}  duration {_ms(item['duration_ms'])}\n")  # fmt: skip
        entry = self.media.get(item["endpoint_id"])
        if entry is not None:
            s, r = entry["send"], entry["recv"]
            w(f"  RTP sent {s['packets_sent']}  received {r['packets_received']}  lost "
              f"{r['packets_lost']}  jitter {r['jitter_ms']} ms  rtt {r['rtt_ms']} ms  "
              f"MOS {r['mos']}  (last interval)\n")  # fmt: skip
            if "srtp_auth_failures" in r:
                w(f"  SRTP auth failures {r['srtp_auth_failures']}  replays "
                  f"{r['srtp_replays']}\n")  # fmt: skip

    def _outcome(self, item: dict[str, Any]) -> None:
        self.outcomes.append(item)
        self.out.write(
            f"* {item['endpoint_id']}: {item['outcome']} ({item['final_code']}) {item['reason']}\n"
        )


async def run_call(args: argparse.Namespace, printer: ItemPrinter) -> int:
    """Place the call; return the exit status."""
    try:
        target_host = URI.parse(args.target).host
    except ValueError as exc:
        raise ConfigError(f"target {args.target!r} is not a SIP URI") from exc
    spec = endpoint_spec(args, "caller", args.target, target_host)
    engine = EndpointEngine(engine_settings(args, args.bind, args.port), printer)
    try:
        engine.start_endpoint(spec, "cli", TraceMode.NONE if args.quiet else TraceMode.ALL)
        limit = args.ring_timeout + args.duration + 45
        try:
            await asyncio.wait_for(engine.wait_idle(), limit)
        except TimeoutError:
            await engine.cancel_run("cli", f"no end after {limit:g} s")
    finally:
        await engine.close()
    answered = any(c["result"] == "answered" for c in printer.calls)
    if answered:
        return EXIT_ANSWERED
    last = printer.outcomes[-1] if printer.outcomes else None
    why = f"{last['outcome']} ({last['final_code']}): {last['reason']}" if last else "no outcome"
    print(f"sipswarm call: not answered: {why}", file=sys.stderr)
    return EXIT_FAILED


def main(args: argparse.Namespace) -> int:
    """Entry point of ``sipswarm call``."""
    printer = ItemPrinter(sys.stdout, trace=not args.quiet)
    try:
        code: int = uvloop.run(run_call(args, printer))  # the agent's loop
        return code
    except SipswarmError as exc:
        print(f"sipswarm call: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("sipswarm call: interrupted", file=sys.stderr)
        return EXIT_FAILED
