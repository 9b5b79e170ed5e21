"""STARTTLS (start_tls on a live plain connection), ssl_verify_peer, get_peer_cert; 127.0.0.1 and ::1."""
import ssl

import gevent
import gevent.event
import gevent.queue
import gevent.socket
import gevent.ssl
import pytest

from packet_gevent import LineConnection, PeerCertificateRejected
from tests.conftest import recv_until_closed


@pytest.fixture
def certs(certificate, tls_contexts):
    """(server context, client context, cert PEM, cert path): conftest's certificate."""
    cert, _, pem = certificate
    server_ctx, client_ctx = tls_contexts
    return server_ctx, client_ctx, pem, cert


class StartTlsServer(LineConnection):
    """A tiny SMTP-like server: ``STARTTLS`` upgrades; every other line is echoed with its transport."""

    instances = []
    context = None

    def post_init(self):
        self.events = []
        self.unbound = gevent.event.AsyncResult()
        self.instances.append(self)

    def receive_line(self, line):
        if line == b"STARTTLS":
            self.send_data(b"220 go ahead\r\n")  # goes out in the clear, before the handshake
            self.events.append(("start_tls", self.start_tls(self.context)))
        else:
            kind = b"tls" if self.get_ssl_socket() is not None else b"plain"
            self.send_data(kind + b": " + line + b"\r\n")

    def ssl_handshake_completed(self):
        self.events.append("handshake")

    def unbind(self, reason=None):
        self.unbound.set(reason)


class StartTlsClient(LineConnection):
    context = None
    verify = None

    def __init__(self):  # the test reads these before post_init may have run
        self.lines = gevent.queue.Queue()
        self.events = []
        self.unbound = gevent.event.AsyncResult()

    def connection_completed(self):
        self.send_data(b"hello\r\nSTARTTLS\r\n")

    def receive_line(self, line):
        self.lines.put(line)
        if line == b"220 go ahead":
            if self.start_tls(self.context):
                self.send_data(b"secret\r\n")

    def ssl_verify_peer(self, cert):
        self.events.append(("verify", cert))
        return self.verify is None or self.verify

    def ssl_handshake_completed(self):
        self.events.append("handshake")

    def unbind(self, reason=None):
        self.unbound.set(reason)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_starttls_between_two_reactor_connections(reactor, certs, host):
    server_ctx, client_ctx, pem, _ = certs
    server_class = type("S", (StartTlsServer,), {"context": server_ctx, "instances": []})
    client_class = type("C", (StartTlsClient,), {"context": client_ctx})
    server = reactor.start_server(host, 0, server_class)
    conn = reactor.connect(host, server.port, client_class, server_hostname="localhost")
    with gevent.Timeout(10):
        assert [conn.lines.get() for _ in range(3)] == [b"plain: hello", b"220 go ahead", b"tls: secret"]
    assert conn.events == [("verify", conn.get_peer_cert()), "handshake"]
    assert ssl.PEM_cert_to_DER_cert(conn.get_peer_cert()) == ssl.PEM_cert_to_DER_cert(pem)
    assert conn.get_ssl_socket().version().startswith("TLS")
    served = server_class.instances[0]
    assert served.events == ["handshake", ("start_tls", True)]
    assert served.get_peer_cert() is None  # the server did not ask for a client certificate
    conn.close_connection()
    assert conn.unbound.get(timeout=5) is None
    assert served.unbound.get(timeout=5) is None


def test_a_stdlib_client_upgrading_mid_stream_and_a_failed_handshake_closes_only_that_one(reactor, certs):
    server_ctx, client_ctx, _, _ = certs
    server_class = type("S", (StartTlsServer,), {"context": server_ctx, "instances": []})
    server = reactor.start_server("127.0.0.1", 0, server_class)
    good = gevent.socket.create_connection(("127.0.0.1", server.port), timeout=10)
    good.sendall(b"before\r\nSTARTTLS\r\n")
    reader = good.makefile("rb")
    assert reader.readline() == b"plain: before\r\n"
    assert reader.readline() == b"220 go ahead\r\n"
    reader.close()
    # gevent's SSLSocket: the handshake waits cooperatively (the stdlib's would block the hub).
    tls = gevent.ssl.SSLSocket(sock=good, server_hostname="localhost", _context=client_ctx)
    tls.sendall(b"after\r\n")
    assert tls.recv(100) == b"tls: after\r\n"

    bad = gevent.socket.create_connection(("127.0.0.1", server.port), timeout=10)
    bad.sendall(b"STARTTLS\r\n")
    assert bad.recv(100) == b"220 go ahead\r\n"
    bad.sendall(b"this is not a TLS ClientHello\r\n" * 4)
    try:  # the server answers with a TLS alert (or a reset: our garbage was left unread) and closes
        recv_until_closed(bad)
    except ConnectionResetError:
        pass
    failed = server_class.instances[1]
    assert isinstance(failed.unbound.get(timeout=5), ssl.SSLError)
    assert failed.events == [("start_tls", False)]
    tls.sendall(b"still\r\n")
    assert tls.recv(100) == b"tls: still\r\n"  # the upgraded one goes on
    tls.close()
    bad.close()


def test_ssl_verify_peer_returning_false_closes_with_peer_certificate_rejected(reactor, certs):
    server_ctx, client_ctx, _, _ = certs
    server_class = type("S", (StartTlsServer,), {"context": server_ctx, "instances": []})
    client_class = type("C", (StartTlsClient,), {"context": client_ctx, "verify": False})
    server = reactor.start_server("127.0.0.1", 0, server_class)
    conn = reactor.connect("127.0.0.1", server.port, client_class, server_hostname="localhost")
    assert isinstance(conn.unbound.get(timeout=10), PeerCertificateRejected)
    assert [event[0] for event in conn.events] == ["verify"]  # no handshake_completed
    conn.lines.get(timeout=5)


def test_ssl_handshake_completed_comes_before_connection_completed_for_tls_from_the_start(reactor, certs):
    server_ctx, client_ctx, pem, _ = certs
    done = gevent.queue.Queue()

    class Tls(LineConnection):
        def post_init(self):
            self.events = []

        def ssl_handshake_completed(self):
            self.events.append(("handshake", self.get_peer_cert() is not None))

        def connection_completed(self):
            self.events.append("completed")
            done.put(self)

    server = reactor.start_server("::1", 0, Tls, ssl_context=server_ctx)
    conn = reactor.connect("::1", server.port, Tls, ssl_context=client_ctx, server_hostname="localhost")
    sides = [done.get(timeout=10) for _ in range(2)]
    client_side = conn
    server_side = next(side for side in sides if side is not conn)
    assert client_side.events == [("handshake", True), "completed"]   # it saw the server's certificate
    assert server_side.events == [("handshake", False), "completed"]  # no client certificate asked
    # EventMachine's get_cipher_name / get_cipher_protocol / get_cipher_bits, the same on both sides.
    for side in (client_side, server_side):
        name, protocol, bits = side.get_ssl_socket().cipher()
        assert (side.get_cipher_name(), side.get_cipher_protocol(), side.get_cipher_bits()) == \
            (name, side.get_ssl_socket().version(), bits)
    assert client_side.get_cipher_protocol().startswith("TLSv1.") and client_side.get_cipher_bits() >= 128
    conn.close_connection()


def test_cipher_getters_are_none_on_a_plain_connection(reactor):
    done = gevent.queue.Queue()

    class Plain(LineConnection):
        def connection_completed(self):
            done.put((self.get_cipher_name(), self.get_cipher_protocol(), self.get_cipher_bits()))

    server = reactor.start_server("127.0.0.1", 0, Plain)
    conn = reactor.connect("127.0.0.1", server.port, Plain)
    assert done.get(timeout=5) == (None, None, None)
    conn.close_connection()


def test_start_tls_to_the_wrong_host_name_fails_and_closes_with_the_verification_error(reactor, certs):
    server_ctx, client_ctx, _, _ = certs
    server_class = type("S", (StartTlsServer,), {"context": server_ctx, "instances": []})
    client_class = type("C", (StartTlsClient,), {"context": client_ctx})
    server = reactor.start_server("127.0.0.1", 0, server_class)
    conn = reactor.connect("127.0.0.1", server.port, client_class, server_hostname="not-this-host.example")
    reason = conn.unbound.get(timeout=10)
    assert isinstance(reason, ssl.SSLCertVerificationError)
    assert conn.events == []  # neither verify nor handshake_completed ran
