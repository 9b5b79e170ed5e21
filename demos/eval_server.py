"""Packet's "complete case": an eval server whose work is done by a worker process.

    python -m demos.eval_server [--host 127.0.0.1] [--port 11006]

Prints ``eval server listening on HOST:PORT`` once it serves.  Each line a
client sends (split by :class:`packet_gevent.LineConnection`) is passed to ``eval_worker`` (demos/eval_workers/eval_worker.py)
with ``ask_worker``; the answer comes back to the asking connection's
``worker_receive``, which writes ``= <result>`` or ``error: <why>``.  The
connection stays usable after an error.  Unlike Packet's demo, nothing is
``eval``-ed: demos.safe_eval accepts arithmetic only.  The per-instance block
of ``start_server`` (Packet's ``instance.wow``) greets each client with its
number.  SIGINT/SIGTERM stop the server and its workers; the exit status is 0.
"""
import itertools
import os
import sys
from typing import Any, Dict, Optional

from packet_gevent import InvalidWorker, LineConnection, LineTooLong, Reactor

from ._cli import parser, setup_logging

WORKER_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "eval_workers")

#: Longest line accepted (bytes).  safe_eval refuses more than 1000 characters
#: anyway; this only stops a client that never sends a newline from growing
#: our buffer without bound.
MAX_LINE = 4096


class EvalServer(LineConnection):
    """One arithmetic expression per line (LineConnection splits them; ``\r\n`` works too)."""

    clients = itertools.count(1)
    max_line_length = MAX_LINE

    def post_init(self) -> None:
        self.too_long = False
        self.waiting = 0

    def wow(self) -> None:
        """Packet's per-instance block: runs for every new client, before connection_completed."""
        self.number = next(self.clients)
        self.send_data(f"wow: you are client {self.number}; send arithmetic, one per line\n".encode())

    def receive_line(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").strip()
        if not text:
            return
        try:
            self.ask_worker("eval_worker", data=text, type="request")
            self.waiting += 1
        except InvalidWorker as exc:
            self.send_data(f"error: {exc}\n".encode())

    def line_too_long(self, error: LineTooLong) -> None:
        # A client that sends an endless line is not talking our protocol:
        # answer the lines before it (their replies may still be on the way),
        # say why, and close.
        self.too_long = True
        self._close_if_too_long()

    def _close_if_too_long(self) -> None:
        if self.too_long and not self.waiting:
            self.send_data(f"error: line longer than {MAX_LINE} bytes; closing\n".encode())
            self.close_connection_after_writing()

    def worker_receive(self, reply: Dict[str, Any]) -> None:
        self.waiting -= 1
        if reply.get("type") == "error":
            message = str(reply.get("error", "unknown error")).replace("\n", " ")
            self.send_data(f"error: {message}\n".encode())
        else:
            self.send_data(f"= {reply['data']}\n".encode())
        self._close_if_too_long()


def main(argv: Optional[list] = None) -> int:
    args = parser("Packet's eval server on packet_gevent (safe arithmetic).", 11006).parse_args(argv)
    setup_logging(args.log_level)

    def setup(reactor: Reactor) -> None:
        server = reactor.start_server(args.host, args.port, EvalServer, lambda instance: instance.wow())
        # next_turn: printed once the reactor has started, workers included.
        ready = f"eval server listening on {server.host}:{server.port}"
        reactor.next_turn(lambda: print(ready, flush=True))

    Reactor.run(setup, worker_root=WORKER_ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
