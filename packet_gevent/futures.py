"""Public name for the pool's cooperative futures: ``packet_gevent.futures.wait``.

The implementation lives in :mod:`packet_gevent.pool.futures`; this module
only re-exports it, so the spelling in the README stays short.
"""
from .pool.futures import DoneAndNotDone, Future, TaskResult, as_completed, wait

__all__ = ["Future", "TaskResult", "wait", "as_completed", "DoneAndNotDone"]
