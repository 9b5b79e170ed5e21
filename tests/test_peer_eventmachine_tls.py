"""EventMachine's TLS tests (start_tls, ssl_verify_peer, ssl_handshake_completed, get_peer_cert,
the inactivity timeout over TLS), translated to packet_gevent.

Each test names the EventMachine file and test it came from (eventmachine/eventmachine,
tests/test_ssl_verify.rb, tests/em_ssl_handlers.rb, tests/test_inactivity_timeout.rb;
translated, not copied).  EventMachine's ``start_tls(:private_key_file, :cert_chain_file,
:verify_peer, :fail_if_no_peer_cert)`` options live in an ``ssl.SSLContext`` here:
``verify_peer: true`` -> ``verify_mode = CERT_OPTIONAL`` with the CA loaded,
``fail_if_no_peer_cert`` -> ``CERT_REQUIRED``, ``private_key_pass`` -> ``load_cert_chain(password=)``.
``get_cipher_protocol`` is ours too.  As in EventMachine's handlers,
both sides call ``start_tls`` on a live plain connection (the server from post_init, the
client from connection_completed: an outgoing connection is not live in post_init here).
Real TLS over 127.0.0.1, with a throw-away self-signed certificate for CN=localhost (the
one tests/conftest.py makes), used by both sides as EventMachine's em-localhost is.
"""
import os
import ssl
import subprocess

import gevent.event
import pytest

from packet_gevent import Connection, IdleTimeout, PeerCertificateRejected
from tests.test_peer_eventmachine_reactor import em_run

KEY_PASS = "em-test-pass"


@pytest.fixture(scope="module")
def material(certificate):
    """(cert path, key path, encrypted key path, cert PEM) for CN=localhost."""
    cert, key, pem = certificate
    encrypted = os.path.join(os.path.dirname(cert), "key.aes.pem")
    subprocess.run(["openssl", "pkey", "-in", key, "-out", encrypted, "-aes256",
                    "-passout", f"pass:{KEY_PASS}"], check=True, capture_output=True, timeout=30)
    return cert, key, encrypted, pem


def context(material, side, *, present_cert=False, encrypted_key=False, verify_peer=False,
            fail_if_no_peer_cert=False):
    """EventMachine's start_tls options as an SSLContext for ``side`` ("server" / "client")."""
    cert, key, encrypted, _ = material
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if side == "server" else ssl.PROTOCOL_TLS_CLIENT)
    if side == "client":
        ctx.check_hostname = False
    if side == "server" or present_cert:
        if encrypted_key:
            ctx.load_cert_chain(cert, encrypted, password=KEY_PASS)
        else:
            ctx.load_cert_chain(cert, key)
    if verify_peer or fail_if_no_peer_cert:
        ctx.load_verify_locations(cafile=cert)
        ctx.verify_mode = ssl.CERT_REQUIRED if fail_if_no_peer_cert else ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Side(Connection):
    """em_ssl_handlers.rb's Client / Server: record the verify call, the handshake and the end."""

    ctx = None
    verify_result = True
    record = None  # a dict shared with the test

    def post_init(self):
        self.record.update(handshake=False, cert=None, verified=False, reason="open")

    def ssl_verify_peer(self, cert):
        self.record["verified"] = True
        self.record["cert"] = cert
        return self.verify_result

    def ssl_handshake_completed(self):
        self.record["handshake"] = True
        self.record["protocol"] = self.get_cipher_protocol()
        self.record["peer_cert"] = self.get_peer_cert()

    def unbind(self, reason=None):
        self.record["reason"] = reason
        self.record["done"].set()


class Server(Side):
    def post_init(self):
        super().post_init()
        self.start_tls(self.ctx)
        if self.record["handshake"]:
            self.close_connection()


class Client(Side):
    def connection_completed(self):
        self.start_tls(self.ctx)


def client_server(server_ctx, client_ctx, *, server_verify=True, client_verify=True):
    """em_ssl_handlers.rb's client_server: run both until each side has ended."""
    server = {"done": gevent.event.Event()}
    client = {"done": gevent.event.Event()}

    def setup(r):
        listener = r.start_server("127.0.0.1", 0, type("S", (Server,), {
            "ctx": server_ctx, "verify_result": server_verify, "record": server}))
        r.connect("127.0.0.1", listener.port, type("C", (Client,), {
            "ctx": client_ctx, "verify_result": client_verify, "record": client}))

        def both_done():
            server["done"].wait(5)
            client["done"].wait(5)
            r.stop()
        r.next_turn(both_done)
    em_run(setup)
    return server, client


def same_cert(pem_a, pem_b):
    return ssl.PEM_cert_to_DER_cert(pem_a) == ssl.PEM_cert_to_DER_cert(pem_b)


def test_fail_no_peer_cert(material):
    # test_ssl_verify.rb: test_fail_no_peer_cert -- a server that requires a client
    # certificate, a client without one: the handshake fails, the server's ssl_verify_peer
    # is never called, its handshake never completes.
    server, client = client_server(context(material, "server", fail_if_no_peer_cert=True),
                                   context(material, "client"))
    assert server["verified"] is False and server["handshake"] is False
    assert isinstance(server["reason"], ssl.SSLError)
    if client.get("protocol") != "TLSv1.3":  # under 1.3 the client may finish first (as in EM)
        assert client["handshake"] is False


@pytest.mark.parametrize("encrypted_key", [False, True], ids=["key", "encrypted_key"])
def test_accept_server(material, encrypted_key):
    # test_ssl_verify.rb: test_accept_server / test_encoded_accept_server -- the server
    # verifies the client's certificate (given with a plain or a password-protected key)
    # and accepts it: its ssl_verify_peer saw the client's PEM, both handshakes complete.
    server, client = client_server(
        context(material, "server", verify_peer=True),
        context(material, "client", present_cert=True, encrypted_key=encrypted_key))
    assert same_cert(server["cert"], material[3])
    assert server["handshake"] and client["handshake"]
    assert same_cert(server["peer_cert"], material[3])
    assert server["reason"] is None


@pytest.mark.parametrize("encrypted_key", [False, True], ids=["key", "encrypted_key"])
def test_accept_client(material, encrypted_key):
    # test_ssl_verify.rb: test_accept_client / test_encoded_accept_client -- the client
    # verifies the server's certificate and accepts it.
    server, client = client_server(
        context(material, "server", encrypted_key=encrypted_key),
        context(material, "client", verify_peer=True))
    assert same_cert(client["cert"], material[3])
    assert client["handshake"] and server["handshake"]
    assert server["verified"] is True and server["cert"] is None  # it asked for none


def test_deny_server(material):
    # test_ssl_verify.rb: test_deny_server -- the server's ssl_verify_peer refuses the
    # client's certificate: it saw the PEM, its handshake does not complete, and the
    # connection ends with unbind(PeerCertificateRejected).
    server, client = client_server(context(material, "server", verify_peer=True),
                                   context(material, "client", present_cert=True),
                                   server_verify=False)
    assert same_cert(server["cert"], material[3])
    assert server["handshake"] is False
    assert isinstance(server["reason"], PeerCertificateRejected)
    assert client["reason"] != "open"  # the client's side ended too


def test_deny_client(material):
    # test_ssl_verify.rb: test_deny_client -- the client's ssl_verify_peer refuses the
    # server's certificate.  EventMachine's verify callback runs during the handshake, so
    # neither side completes; OUR DOCUMENTED BEHAVIOUR DIFFERS: Python's ssl has no
    # per-certificate hook, ssl_verify_peer runs after the handshake, so the server's
    # handshake may complete before the client closes with PeerCertificateRejected.
    server, client = client_server(context(material, "server"),
                                   context(material, "client", verify_peer=True),
                                   client_verify=False)
    assert same_cert(client["cert"], material[3])
    assert client["handshake"] is False
    assert isinstance(client["reason"], PeerCertificateRejected)
    assert server["reason"] != "open"


def test_inactivity_timeout_over_tls_is_not_doubled(material):
    # test_inactivity_timeout.rb: test_for_real, TLS part (EM issue 554: the timeout took
    # twice as long over TLS) -- both sides start TLS, the client sends one message that
    # is echoed, then nothing: a 0.15 s inactivity timeout closes the client about 0.15 s
    # later (EM allows 0.01-0.29 s), with a timeout reason (ours IdleTimeout; EM
    # Errno::ETIMEDOUT).  A periodic timer of the client's own does not count as activity.
    times = {}

    class TimeoutStartTls(Connection):
        def post_init(self):
            times["start"] = self.reactor.hub.loop.now()
            self.start_tls(context(material, "server"))

        def receive_data(self, data):
            self.send_data(b">>>you sent: " + data)

    class TimeoutHandlerTls(Connection):
        def connection_completed(self):
            self.start_tls(context(material, "client"))

        def ssl_handshake_completed(self):
            self.add_periodic_timer(0.05, lambda: None)
            self.send_data(b"hello world")

        def receive_data(self, data):
            times["echo"] = self.reactor.hub.loop.now()

        def unbind(self, reason=None):
            times["finish"] = self.reactor.hub.loop.now()
            times["reason"] = reason
            self.reactor.stop()

    def setup(r):
        server = r.start_server("127.0.0.1", 0, TimeoutStartTls)
        r.connect("127.0.0.1", server.port, TimeoutHandlerTls, idle_timeout=0.15)
    em_run(setup)
    assert isinstance(times["reason"], IdleTimeout)
    assert "echo" in times
    assert 0.14 <= times["finish"] - times["start"] <= 0.29 + 0.2  # + slack for a loaded machine
