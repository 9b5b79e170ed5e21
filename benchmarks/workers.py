"""Workers benchmark: ask_worker round trips, requests in flight, crash to error reply.

Usage: ``python -m benchmarks.workers``.  One worker process (a doubler) under
a :class:`packet_gevent.Reactor`; prints the round trip of one request with a
callback (p50, p99 of 5,000), 20,000 requests in flight (requests/s), and
for 5 SIGKILLs the time to the error reply of the pending request and to the
restarted worker's first answer.  The figures quoted in
:mod:`packet_gevent.workers.manager` come from this script.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Any, Dict

import gevent
import gevent.event

from packet_gevent import Reactor, Worker
from packet_gevent.workers import manager


def main() -> None:
    """Print round trip, throughput and crash-handling times."""
    manager.RESTART_RESET = 0.0  # restart at once every time: measure the restart, not the backoff

    class Doubler(Worker):
        worker_name = "doubler"

        def receive_data(self, request: Dict[str, Any]) -> None:
            if request["data"] == "sleep":
                gevent.sleep(30)
            self.reply(request, request["data"])

    reactor = Reactor().start()
    reactor.start_worker(worker=Doubler)

    def ask(data: Any) -> Dict[str, Any]:
        result = gevent.event.AsyncResult()
        reactor.ask_worker("doubler", data=data, callback=result.set)
        return result.get(10)

    for i in range(500):
        ask(i)
    samples = []
    for i in range(5000):
        t0 = time.perf_counter()
        ask(i)
        samples.append(time.perf_counter() - t0)
    samples.sort()
    print(f"round trip p50 {samples[2500] * 1e6:.0f} us, p99 {samples[4950] * 1e6:.0f} us")
    count, done = [0], gevent.event.Event()

    def counted(reply: Dict[str, Any]) -> None:
        count[0] += 1
        if count[0] == 20000:
            done.set()
    t0 = time.perf_counter()
    for i in range(20000):
        reactor.ask_worker("doubler", data=i, callback=counted)
    done.wait(60)
    print(f"20,000 in flight: {20000 / (time.perf_counter() - t0):,.0f} requests/s")
    for _ in range(5):
        pid = reactor.workers.pids("doubler")[0]
        result = gevent.event.AsyncResult()
        reactor.ask_worker("doubler", data="sleep", callback=result.set)
        gevent.sleep(0.05)
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        result.get(5)
        noticed = time.perf_counter() - t0
        ask(1)
        print(f"SIGKILL -> error reply {noticed * 1e3:.1f} ms, -> restarted worker's answer "
              f"{(time.perf_counter() - t0) * 1e3:.1f} ms")
    reactor.stop(5)


if __name__ == "__main__":
    main()
