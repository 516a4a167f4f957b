"""TLS settings for SIP over TLS (RFC 3261 §26.3.1, RFC 5922), built on the stdlib ``ssl``.

Call :func:`client_context` once per settings object and hand the context to
:class:`sipswarm.engine.stream.StreamTransport`; the server name for SNI and
certificate matching is chosen per connection (the SIP domain, RFC 5922 §4),
falling back to :attr:`TlsSettings.server_name`, then to the remote address.
:func:`server_context` is for listening (answering) endpoints.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sipswarm.errors import ConfigError

__all__ = ["TlsSettings", "TlsVerify", "client_context", "server_context"]

TlsVerify = Literal["system", "custom", "skip"]
_VERIFY_MODES = ("system", "custom", "skip")


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """How to verify the server and whom to present as the client.

    ``verify``: ``system`` checks the server against the system trust store,
    ``custom`` against ``ca_file`` only, ``skip`` checks nothing (test beds
    with self-signed certificates). ``cert_file``/``key_file`` present a
    client certificate (mutual TLS). ``server_name`` overrides SNI and the
    name the certificate must carry.
    """

    verify: TlsVerify = "system"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None


def _check_file(field: str, path: str | None) -> None:
    if path is not None and not Path(path).is_file():
        raise ConfigError(
            f"tls.{field} {path!r} is not a readable file; give the path of a PEM file"
        )


def client_context(settings: TlsSettings) -> ssl.SSLContext:
    """Return a client SSLContext for ``settings``; ConfigError names the bad field."""
    if settings.verify not in _VERIFY_MODES:
        raise ConfigError(
            f"tls.verify must be one of {', '.join(_VERIFY_MODES)}, got {settings.verify!r}"
        )
    if settings.verify == "custom" and settings.ca_file is None:
        raise ConfigError("tls.verify is 'custom' but tls.ca_file is not set; give a CA PEM file")
    if (settings.cert_file is None) != (settings.key_file is None):
        raise ConfigError("tls.cert_file and tls.key_file go together; set both or neither")
    for name in ("ca_file", "cert_file", "key_file"):
        _check_file(name, getattr(settings, name))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.verify == "skip":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif settings.verify == "system":
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    _load(context, settings)
    return context


def server_context(cert_file: str, key_file: str, ca_file: str | None = None) -> ssl.SSLContext:
    """Return a server SSLContext; with ``ca_file`` clients must present a certificate it signed."""
    _check_file("cert_file", cert_file)
    _check_file("key_file", key_file)
    _check_file("ca_file", ca_file)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
        if ca_file is not None:
            context.load_verify_locations(cafile=ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"tls certificate/key/CA could not be loaded: {exc}") from exc
    return context


def _load(context: ssl.SSLContext, settings: TlsSettings) -> None:
    try:
        if settings.ca_file is not None:
            context.load_verify_locations(cafile=settings.ca_file)
        if settings.cert_file is not None and settings.key_file is not None:
            context.load_cert_chain(settings.cert_file, settings.key_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"tls.ca_file/cert_file/key_file could not be loaded: {exc}; check they are PEM files"
        ) from exc
