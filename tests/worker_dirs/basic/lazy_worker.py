"""Fixture: not started with the reactor (no_auto_load); started with start_worker."""
import os

from packet_gevent import Worker


class LazyWorker(Worker):
    no_auto_load = True

    def worker_init(self):
        if self.worker_options.get("fail_init"):
            raise RuntimeError("worker_init failed on purpose")

    def receive_data(self, request):
        self.reply(request, {"key": self.worker_key, "options": self.worker_options,
                             "pid": os.getpid(), "data": request["data"]})
