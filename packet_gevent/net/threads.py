"""Calls into a reactor from other threads (Twisted's ``callFromThread``, EventMachine's ``schedule``).

Almost nothing in a reactor is thread-safe: its connections, timers and
servers belong to the hub of the thread that runs it.  A thread (or another
library's callback running in one) hands work over with
:func:`call_from_thread`: the call is appended to the hub's callback queue
and the loop is woken through its async watcher
(``loop.run_callback_threadsafe``), and it runs on the next loop turn in a
greenlet of its own (so it may block cooperatively, and may use any reactor
or connection method).  The returned ``concurrent.futures.Future`` carries
its result or exception to the calling thread.
"""
from __future__ import annotations

import concurrent.futures
import logging
from typing import Any, Callable

import gevent

__all__ = ["call_from_thread"]

logger = logging.getLogger(__name__)


def call_from_thread(hub: Any, fn: Callable[..., Any], args: tuple) -> "concurrent.futures.Future[Any]":
    """Run ``fn(*args)`` in a new greenlet of ``hub``; safe from any thread."""
    if not callable(fn):
        raise TypeError(f"call_from_thread needs a callable, got {fn!r}")
    future: "concurrent.futures.Future[Any]" = concurrent.futures.Future()
    hub.loop.run_callback_threadsafe(gevent.spawn_raw, _run, fn, args, future)
    return future


def _run(fn: Callable[..., Any], args: tuple, future: "concurrent.futures.Future[Any]") -> None:
    if not future.set_running_or_notify_cancel():
        return  # cancelled by the thread before it ran
    try:
        result = fn(*args)
    except BaseException as exc:  # gevent.Timeout, GreenletExit too: the thread must hear of it
        logger.exception("call_from_thread callback %r raised", fn)
        future.set_exception(exc)
        if not isinstance(exc, Exception):
            raise
    else:
        future.set_result(result)
