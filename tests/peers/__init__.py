"""Real peers for integration tests: Kamailio, SIPp, pjsua2, dnsmasq, a lossy UDP relay.

Every peer runs on 127.0.0.1 on ports the kernel picked (never 5060), is
started by a function that waits until it really answers, and is stopped by
the PID we started (never by name), after which nothing of it is left. All
waits are bounded. The fixtures (registered by ``tests/conftest.py`` from
:mod:`tests.peers.fixtures`) skip the test when the peer is not installed.

Fixtures
--------
``kamailio`` (session)
    Registrar + record-routing proxy, UDP+TCP on one port, TLS on another
    when kamailio-tls-modules is installed; digest auth for users 1000..1999
    (``secret<user>``) and alice/bob/carol (``<name>-pw``), domain 127.0.0.1.
    Shared by the session: do not stop it, do not rely on an empty location table.
``kamailio_factory`` (function)
    ``kamailio_factory(KamailioOptions(auth=False, tls=False))`` for a
    private one; stopped at the end of the test.

Functions
---------
:func:`tests.peers.kamailio.start_kamailio`, :func:`tests.peers.dns.start_dnsmasq`,
:func:`tests.peers.certs.make_certificates`, :func:`tests.peers.procs.free_port`,
:class:`tests.peers.procs.ManagedProcess` (start, log, stop by PID, leftovers).
"""
