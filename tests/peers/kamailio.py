"""Kamailio registrar + proxy as a test peer on 127.0.0.1, UDP+TCP (+TLS) (+WS/WSS).

    kam = start_kamailio(KamailioOptions(tls=True))
    kam.address("udp")          # ("127.0.0.1", port)
    kam.password("1000")        # "secret1000"
    kam.contacts("1500")        # registered Contact URIs of an AoR (kamcmd ul.lookup)
    kam.stop()                  # by PID; asserts nothing of it stays behind

Users 1000..1999 (password ``secret<user>``) and alice/bob/carol
(``<name>-pw``) live in an sqlite ``subscriber`` table. REGISTER gets a 401
and initial requests from the local domain a 407 (digest, qop=auth), unless
``auth=False``. ``ws=True`` adds a SIP WebSocket listener (RFC 7118, modules
``xhttp`` + ``websocket`` from kamailio-websocket-modules; ``kam.address("ws")``)
and, with TLS, a WSS one (``kam.address("wss")``): clients there are reached over
their connection (nathelper ``fix_nated_register`` / ``add_contact_alias`` /
``handle_ruri_alias``). Kamailio runs in the foreground (``-DD``) as our child, with
its pid file, config, database and control socket in a private temp dir.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .certs import CertFiles, make_certificates
from .procs import LOOPBACK, ManagedProcess, free_port, wait_until

TEMPLATE = Path(__file__).with_name("kamailio.cfg.in")
SQL_DIR = Path("/usr/share/kamailio/db_sqlite")
MODULES_DIR = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")
EXTRA_USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}


def kamailio_available() -> bool:
    return shutil.which("kamailio") is not None


def ws_available() -> bool:
    """True when kamailio-websocket-modules is installed."""
    return (MODULES_DIR / "websocket.so").is_file() and (MODULES_DIR / "xhttp.so").is_file()


def tls_available() -> bool:
    """True when kamailio-tls-modules is installed."""
    return any(MODULES_DIR.glob("tls.so")) or any(Path("/usr/lib").rglob("kamailio/modules/tls.so"))


@dataclass(frozen=True)
class KamailioOptions:
    """What to start. ``tls=None`` means: TLS if the module is installed.

    ``ws=True`` also listens for SIP over WebSocket (and WSS when TLS is on).
    """

    auth: bool = True
    tls: bool | None = None
    ws: bool = False
    users: range = range(1000, 2000)
    extra_users: dict[str, str] = field(default_factory=lambda: dict(EXTRA_USERS))
    domain: str = LOOPBACK
    children: int = 2
    tcp_children: int = 2
    debug: int = 1
    shm_mb: int = 64
    pkg_mb: int = 8
    ready_timeout: float = 15.0


@dataclass
class Kamailio:
    """A running Kamailio; see the module docstring."""

    options: KamailioOptions
    port: int
    tls_port: int | None
    workdir: Path
    process: ManagedProcess
    certs: CertFiles | None
    host: str = LOOPBACK
    ws_port: int | None = None
    wss_port: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def address(self, transport: str = "udp") -> tuple[str, int]:
        """(host, port) to send to for ``udp``, ``tcp``, ``tls``, ``ws`` or ``wss``."""
        ports = {"tls": self.tls_port, "ws": self.ws_port, "wss": self.wss_port}
        kind = transport.lower()
        if kind not in ports:
            return (self.host, self.port)
        port = ports[kind]
        if port is None:
            raise RuntimeError(f"this Kamailio was started without {kind.upper()}")
        return (self.host, port)

    def uri(self, transport: str = "udp", user: str | None = None) -> str:
        host, port = self.address(transport)
        who = f"{user}@" if user else ""
        return f"sip:{who}{host}:{port};transport={transport.lower()}"

    def password(self, user: str) -> str:
        if user in self.options.extra_users:
            return self.options.extra_users[user]
        return f"secret{user}"

    def contacts(self, aor: str) -> list[str]:
        """Registered Contact URIs of ``aor`` (user part), from kamcmd ul.lookup."""
        out = subprocess.run(
            ["kamcmd", "-s", f"unix:{self.workdir / 'ctl'}", "ul.lookup", "location", f"s:{aor}"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout
        return [line.split(":", 1)[1].strip() for line in out.splitlines() if "Address:" in line]

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines)

    def stop(self) -> int:
        """SIGTERM by PID (SIGKILL after 5 s), then remove the temp dir. Idempotent."""
        code = self.process.stop()
        leftovers = self.process.leftovers()
        shutil.rmtree(self.workdir, ignore_errors=True)
        if leftovers:
            raise RuntimeError(f"kamailio children left behind: {leftovers}")
        return code


def _make_db(path: Path, options: KamailioOptions) -> None:
    db = sqlite3.connect(path)
    with db:
        db.executescript((SQL_DIR / "standard-create.sql").read_text())
        db.executescript((SQL_DIR / "auth_db-create.sql").read_text())
        rows = [(str(u), options.domain, f"secret{u}") for u in options.users]
        rows += [(u, options.domain, p) for u, p in options.extra_users.items()]
        db.executemany("INSERT INTO subscriber(username, domain, password) VALUES (?,?,?)", rows)
    db.close()


def _write_config(
    workdir: Path, options: KamailioOptions, port: int, tls_port: int | None, ws: tuple[int, int]
) -> Path:
    values = {
        "WS_PORT": str(ws[0]),
        "WSS_PORT": str(ws[1]),
        "DEBUG": str(options.debug),
        "DOMAIN": options.domain,
        "CHILDREN": str(options.children),
        "TCP_CHILDREN": str(options.tcp_children),
        "PORT": str(port),
        "TLS_PORT": str(tls_port or 0),
        "TLS_CFG": str(workdir / "tls.cfg"),
        "CTL": str(workdir / "ctl"),
        # Pitfall: an absolute sqlite path needs 4 slashes in the URL.
        "DBURL": f"sqlite:///{workdir / 'users.sqlite'}",
    }
    text = TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    cfg = workdir / "kamailio.cfg"
    cfg.write_text(text)
    return cfg


def _write_tls_cfg(workdir: Path) -> CertFiles:
    certs = make_certificates(workdir, ("localhost", LOOPBACK))
    (workdir / "tls.cfg").write_text(
        "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\n"
        f"require_certificate = no\nprivate_key = {certs.key}\ncertificate = {certs.cert}\n\n"
        "[client:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\n"
    )
    return certs


def options_ping(address: tuple[str, int], timeout: float = 0.5) -> bytes | None:
    """Send one OPTIONS over UDP to ``address``; return the reply or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.settimeout(timeout)
        port = sock.getsockname()[1]
        host, rport = address
        msg = (
            f"OPTIONS sip:{host}:{rport} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {LOOPBACK}:{port};branch=z9hG4bK-ping{port}\r\n"
            f"From: <sip:ping@{LOOPBACK}>;tag=p{port}\r\nTo: <sip:{host}:{rport}>\r\n"
            f"Call-ID: ping-{port}@{LOOPBACK}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        sock.sendto(msg.encode(), address)
        try:
            return sock.recv(65535)
        except OSError:
            return None


def start_kamailio(options: KamailioOptions | None = None) -> Kamailio:
    """Start Kamailio on free ports; return once an OPTIONS ping gets a 200.

    Raises RuntimeError with the log tail if the config is rejected or it
    does not answer within ``options.ready_timeout``. Always call ``stop()``.
    """
    options = options or KamailioOptions()
    tls = tls_available() if options.tls is None else options.tls
    # A short private dir: the ctl unix socket path must stay under 108 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="sipswarm-kam-"))
    port = free_port(("udp", "tcp"))
    tls_port = free_port(("tcp",)) if tls else None
    ws_port = free_port(("tcp",)) if options.ws else None
    wss_port = free_port(("tcp",)) if options.ws and tls else None
    certs = _write_tls_cfg(workdir) if tls else None
    if options.auth:
        _make_db(workdir / "users.sqlite", options)
    cfg = _write_config(workdir, options, port, tls_port, (ws_port or 0, wss_port or 0))
    defines = [
        arg
        for flag, on in (("WITH_AUTH", options.auth), ("WITH_TLS", tls), ("WITH_WS", options.ws))
        if on
        for arg in ("-A", flag)
    ]
    check = subprocess.run(
        ["kamailio", "-c", "-f", str(cfg), *defines], capture_output=True, text=True, timeout=30
    )
    if check.returncode != 0:
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError(f"kamailio rejected its config:\n{check.stderr[-3000:]}")
    argv = ["kamailio", "-f", str(cfg), *defines, "-DD", "-E", "-P", str(workdir / "kamailio.pid"),
            "-Y", str(workdir), "-w", str(workdir),
            "-m", str(options.shm_mb), "-M", str(options.pkg_mb)]  # fmt: skip
    process = ManagedProcess(argv, workdir / "kamailio.log", cwd=workdir)
    kam = Kamailio(options, port, tls_port, workdir, process, certs)
    kam.ws_port, kam.wss_port = ws_port, wss_port

    def answers() -> bool:
        if not process.running():
            raise RuntimeError(f"kamailio exited at start:\n{process.log_tail()}")
        reply = options_ping(kam.address("udp"))
        return reply is not None and reply.startswith(b"SIP/2.0 200")

    try:
        wait_until(answers, options.ready_timeout, "kamailio (OPTIONS ping)", interval=0.1)
        for kind, extra in (("tls", tls_port), ("ws", ws_port), ("wss", wss_port)):
            if extra is not None:
                wait_until(lambda k=kind: _tcp_open(kam.address(k)), 5, f"kamailio {kind} port")
    except BaseException:
        kam.stop()
        raise
    process.note_descendants()
    return kam


def _tcp_open(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=0.5).close()
    except OSError:
        return False
    return True
