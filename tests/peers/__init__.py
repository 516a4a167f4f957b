"""Real peers for integration tests: Kamailio, SIPp, pjsua2, dnsmasq, a lossy UDP relay.

Rules every peer here follows: it binds 127.0.0.1 only, on ports the kernel
picked (never 5060: other engineers run tests on this machine at the same
time); it is started by a function that returns only once the peer really
answers; it is stopped by the PID we started (never by name), after which
none of its processes is left (:meth:`procs.ManagedProcess.leftovers`);
every wait is bounded. Fixtures skip the test when the peer is not installed
(``scripts/test.sh`` installs them all).

Fixtures (registered by ``tests/conftest.py`` from :mod:`tests.peers.fixtures`)
-------------------------------------------------------------------------------
``kamailio`` (session)
    Registrar + record-routing stateful proxy: UDP and TCP on one port, TLS
    on another (self-signed CA made by the fixture: ``kamailio.certs.ca``)
    when kamailio-tls-modules is installed. Digest auth (qop=auth): 401 for
    REGISTER, 407 for initial requests whose From domain is 127.0.0.1.
    Users 1000..1999 with password ``secret<user>`` and alice/bob/carol with
    ``<name>-pw`` (``kamailio.password(user)``). ``kamailio.address("tcp")``,
    ``kamailio.uri("tls", user)``, ``kamailio.contacts(aor)``. Shared by the
    whole session: never stop it, and use AoRs no other test registers.
``kamailio_factory`` (function)
    ``kamailio_factory(KamailioOptions(auth=False, tls=False, ...))`` starts a
    private one, stopped at the end of the test.
``sipp_uas`` (function)
    ``sipp_uas("answer" | "busy" | "ring", rtp_echo=False, transport="udp")``:
    answer = 180 + 200 (PCMU SDP) then waits for BYE; busy = 486; ring = 180
    and waits for CANCEL (200 + 487). ``uas.address``, ``uas.stats()``.
``pjsua_peer`` (function)
    ``pjsua_peer("answer", "--calls", "1")``: pjsua2 in a subprocess
    (:mod:`tests.peers.pjsua_peer`), ``peer.sip_address``, ``peer.wait_done()``
    returns its JSON events, including per call ``rtp_rx_packets``.
``dns_server_factory`` (function)
    ``dns_server_factory(DnsRecords(hosts=..., srv=..., naptr=...))``:
    dnsmasq serving only those records; ``server.address``, ``server.queries()``.
``udp_relay`` (function)
    ``udp_relay(target, drop_every=N, delay=s, jitter=s, match=pred)``: a
    user-space relay for loss and jitter (the kernel here has no netem).

Functions (for module- or session-scoped use)
---------------------------------------------
:func:`kamailio.start_kamailio`, :func:`sipp.start_sipp_uas`,
:func:`sipp.run_sipp_uac` (n calls at rate r, optional digest accounts via
CSV, optional RTP from :func:`media.write_ulaw_tone`; returns exit code and
parsed ``-trace_stat`` counters), :func:`sipp.run_sipp_register`,
:func:`pjsua.start_pjsua`, :func:`pjsua.run_pjsua_call`,
:func:`dns.start_dnsmasq`, :func:`certs.make_certificates` (CA + server or
client certificate), :func:`procs.free_port`, :class:`procs.ManagedProcess`.

SIPp scenarios are in ``scenarios/``: they mirror Record-Route (the UAS) and
follow the route set (the UAC), because Kamailio answers an in-dialog request
without them with 404 (see /work/shared/testbed/README.md for the pitfalls).
"""
