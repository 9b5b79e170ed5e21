"""Exception classes: one base, ``PacketError``, and a subclass per cause.

Messages say what went wrong and what to do about it.  Errors that come from
the peer or the OS keep the original error as ``__cause__``.
"""
from __future__ import annotations

from concurrent.futures import BrokenExecutor
from typing import Optional

__all__ = [
    "PacketError",
    "FrameError",
    "CodecError",
    "InvalidWorker",
    "WorkerLoadError",
    "WorkerCrashed",
    "WorkerError",
    "SerializationError",
    "PoolClosed",
    "IdleTimeout",
    "OutboundOverflow",
    "ChannelClosed",
    "TaskTimeout",
    "WorkerTimeout",
    "PoolBroken",
    "ReactorError",
    "AddressInUse",
    "ReactorStopping",
]


class PacketError(Exception):
    """Base class of every error raised by packet_gevent."""


class ReactorError(PacketError, RuntimeError):
    """A reactor was asked for something it cannot do in its state or kind
    (connect a handler that is still connected; ask the core reactor for workers)."""


class AddressInUse(PacketError, OSError):
    """``start_server`` could not listen: another server holds that address (the user's
    choice of address).  An ``OSError`` with ``errno.EADDRINUSE``."""


class ReactorStopping(ReactorError):
    """The reactor is stopping: it opens no new connections and starts no workers."""


class FrameError(PacketError, ValueError):
    """A length-prefixed frame was malformed, cut short or over the size limit.

    The decoder that raised it is left in an error state: the stream it was
    reading cannot be trusted any more and should be closed.
    """


class CodecError(PacketError, ValueError):
    """An object could not be encoded or decoded by a connection's codec."""


class InvalidWorker(PacketError, LookupError):
    """``ask_worker`` (or a delete/route) named a worker that is not running."""


class WorkerLoadError(PacketError, ImportError):
    """A module in the worker directory could not be loaded or has no worker class."""


class WorkerCrashed(PacketError):
    """A child process died while it owed an answer.

    ``exitcode`` is the exit status when it exited, ``signal`` the signal
    number when a signal killed it (one of the two is None).
    """

    def __init__(self, message: str, *, pid: Optional[int] = None,
                 exitcode: Optional[int] = None, signal: Optional[int] = None) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.signal = signal


class WorkerError(PacketError):
    """A worker raised while handling a request; the worker lives on.

    ``remote_traceback`` holds the traceback text from the worker process.
    """

    def __init__(self, message: str, *, remote_traceback: Optional[str] = None) -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback


class SerializationError(PacketError, TypeError):
    """A function, argument or result could not be pickled for a child process."""


class PoolClosed(PacketError, RuntimeError):
    """The pool was shut down; it takes no new tasks."""


class IdleTimeout(PacketError, TimeoutError):
    """A connection received nothing for longer than its ``idle_timeout``."""


class OutboundOverflow(PacketError):
    """More than ``max_outbound_size`` bytes were queued for a peer that does not read."""


class ChannelClosed(PacketError, RuntimeError):
    """A master<->child channel was used after it closed.

    Closed by ``close()``, or because the peer went away or sent a bad stream;
    the original error, if any, is the ``__cause__``.
    """


class TaskTimeout(PacketError, TimeoutError):
    """A pool task ran longer than its timeout; its process was killed and replaced.

    A ``TimeoutError``, so ``except TimeoutError`` catches it; waiting on a
    future with ``result(timeout)`` raises the plain ``TimeoutError`` instead.
    """


class WorkerTimeout(PacketError, TimeoutError):
    """A worker did not answer an ``ask_worker(..., timeout=s)`` request within ``s`` seconds.

    The request was answered with this error; the worker was left running (a
    reply it sends later is dropped).  A ``TimeoutError``.
    """


class PoolBroken(PacketError, BrokenExecutor):
    """A fork pool cannot run tasks: its ``initializer`` raised in a new process.

    Every task it held fails with this error and ``submit`` raises it; the
    remote traceback of the initializer is in ``remote_traceback``.
    """

    def __init__(self, message: str, *, remote_traceback: Optional[str] = None) -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback
