"""Fixture: Packet's idiom: change the request and send it back."""
from packet_gevent import Worker


class DoubleWorker(Worker):
    def receive_data(self, request):
        request["data"] = request["data"] * 2
        request["type"] = "response"
        self.send_data(request)
