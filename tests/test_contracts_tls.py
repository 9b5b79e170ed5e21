"""The TLS writer coalesces small queued chunks: one TLS write for many send_data calls."""
import gevent.ssl

from packet_gevent import Connection
from tests.conftest import receive_all_over_tls


def test_tls_writer_coalesces_small_chunks_and_keeps_their_order(reactor, tls_contexts,
                                                                  monkeypatch):
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

    assert receive_all_over_tls(reactor, tls_contexts, Sender) == b"".join(chunks)
    assert sum(writes) >= 12000 and len(writes) <= 10, writes[:20]
