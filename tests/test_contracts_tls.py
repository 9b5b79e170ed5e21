"""The TLS writer coalesces small queued chunks: one TLS write for many send_data calls."""
import gevent
import gevent.event
import gevent.ssl

from packet_gevent import Connection
from tests.test_reactor_edges import tls_contexts  # noqa: F401 (a fixture)


def test_tls_writer_coalesces_small_chunks_and_keeps_their_order(reactor, tls_contexts,
                                                                  monkeypatch):
    server_ctx, client_ctx = tls_contexts
    writes = []
    real_sendall = gevent.ssl.SSLSocket.sendall

    def counting_sendall(sock, data, flags=0):
        writes.append(len(data))
        return real_sendall(sock, data, flags)

    monkeypatch.setattr(gevent.ssl.SSLSocket, "sendall", counting_sendall)
    chunks = [b"%05d," % i for i in range(2000)]      # 12,000 bytes in 2,000 send_data calls

    class Sender(Connection):
        def connection_completed(self):
            for chunk in chunks:                       # queued: the writer runs after us
                self.send_data(chunk)
            self.close_connection_after_writing()

    received = []
    done = gevent.event.Event()

    class Reader(Connection):
        def receive_data(self, data):
            received.append(data)

        def unbind(self, reason=None):
            done.set()

    server = reactor.start_server("127.0.0.1", 0, Sender, ssl_context=server_ctx)
    reactor.connect("127.0.0.1", server.port, Reader, ssl_context=client_ctx,
                    server_hostname="localhost")
    assert done.wait(10)
    assert b"".join(received) == b"".join(chunks)
    assert sum(writes) >= 12000 and len(writes) <= 10, writes[:20]
