"""The eval server's worker: evaluates one arithmetic line per request, safely.

Packet's original ran ``eval`` on the client's line; this one uses
demos.safe_eval (numbers and + - * / // % ** only, bounded work).  Two
processes share the load (``pool_size``); a connection's lines still come back
in order (the master keeps a connection on one process while it waits).
"""
from demos.safe_eval import EvalError, format_number, safe_eval
from packet_gevent import Worker


class EvalWorker(Worker):
    worker_name = "eval_worker"
    pool_size = 2

    def worker_init(self) -> None:
        self.evaluated = 0
        self.log(f"eval worker {self.pool_index} ready")

    def receive_data(self, request: dict) -> None:
        try:
            value = safe_eval(request["data"])
        except EvalError as exc:
            self.reply(request, None, type="error", error=str(exc))
            return
        self.evaluated += 1
        # Packet's idiom: change the request and send it back.
        request["data"] = format_number(value)
        request["type"] = "response"
        self.send_data(request)
