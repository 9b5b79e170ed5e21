"""Fixture: one worker name, three processes."""
import os

import gevent

from packet_gevent import Worker


class PoolWorker(Worker):
    pool_size = 3

    def receive_data(self, request):
        delay = request["data"]
        if delay:
            gevent.sleep(delay)
        self.reply(request, (os.getpid(), self.pool_index))
