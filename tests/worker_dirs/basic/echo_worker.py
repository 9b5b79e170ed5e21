"""Fixture: a worker that does what each request's data says (tests/test_workers.py)."""
import os

import gevent

from packet_gevent import Worker


class EchoWorker(Worker):
    worker_name = "echo_worker"

    def worker_init(self):
        self.init_pid = os.getpid()
        self.waiting = {}  # forwarded request id -> original request

    def receive_data(self, request):
        if request["type"] == "notify":
            request["data"] = ("notify_back", request["data"])
        elif request["type"] != "request":
            return self.on_reply(request)
        op, arg = request["data"]
        if op == "echo":
            self.reply(request, arg)
        elif op == "pid":
            self.reply(request, os.getpid())
        elif op == "sleep":
            gevent.sleep(arg)
            self.reply(request, arg)
        elif op == "raise":
            raise ValueError(f"asked to raise: {arg}")
        elif op == "exit":
            os._exit(arg)
        elif op == "options":
            self.reply(request, (self.worker_key, self.worker_options))
        elif op == "status":
            self.register_status(arg)
            self.reply(request, "stored")
        elif op == "result":
            self.send_result(arg)
            self.reply(request, "sent")
        elif op == "fresh_dict":
            # A fresh dict without routing keys: filled in from the current request.
            self.send_data({"type": "response", "data": arg})
        elif op == "twice":
            self.reply(request, 1)
            self.reply(request, 2)
        elif op == "forward":
            # Worker -> worker: ask double_worker; answer our asker when it replies.
            self.ask_worker("double_worker", data=arg, original=request)
        elif op == "forward_missing":
            self.ask_worker("no_such_worker", data=arg, original=request)
        elif op == "log":
            self.log("hello from", os.getpid())
            self.reply(request, "logged")
        elif op == "big":
            self.reply(request, b"x" * arg)
        elif op == "bad_message":
            # An instance of a class that exists only in this process: the
            # master cannot unpickle it.
            only_here = type("OnlyHere", (), {"__module__": __name__})
            globals()["OnlyHere"] = only_here
            self.reply(request, only_here())
        elif op == "notify_back":
            # Reply to an untracked message: routed by client_signature alone.
            self.send_data({"type": "response", "data": arg,
                            "client_signature": request["client_signature"]})
        elif op == "fds":
            self.reply(request, sorted(int(fd) for fd in os.listdir("/proc/self/fd")))
        elif op == "serve":
            # The worker's own reactor: a server in the worker process.
            from packet_gevent import Connection

            class Upper(Connection):
                def receive_data(self, data):
                    self.send_data(data.upper())

            server = self.start_server("127.0.0.1", 0, Upper)
            self.reply(request, server.port)
        elif op == "timer":
            self.add_timer(arg, self.reply, request, "timer fired")
        else:
            raise KeyError(f"unknown op {op!r}")

    def on_reply(self, reply):
        original = reply.get("original")
        if original is None:
            return
        if reply["type"] == "error":
            self.reply(original, None, type="error", error=f"forwarded: {reply['error']}")
        else:
            self.reply(original, ("doubled", reply["data"]))
