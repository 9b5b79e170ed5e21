"""Fixture: a worker with its own master-side proxy (Packet's set_worker_proxy)."""
from packet_gevent import MetaPimp, Worker


class UpperHandler(MetaPimp):
    """Upper-cases every response and counts what it routed."""

    def pimp_init(self):
        self.routed = 0

    def process_response(self, obj):
        self.routed += 1
        if obj["type"] == "response":
            obj["data"] = str(obj["data"]).upper()
            obj["via"] = "upper_handler"
        self.deliver(obj)


class ProxiedWorker(Worker):
    def receive_data(self, request):
        self.reply(request, request["data"])


ProxiedWorker.set_worker_proxy("upper_handler")
