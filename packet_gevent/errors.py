"""Exception classes: one base, ``PacketError``, and a subclass per cause, named for whose fault it is.

Messages say what went wrong and what to do about it.  Errors that come from
the peer or the OS keep the original error as ``__cause__``.  Where one cause
splits into "you did it" and "it happened to you", the more specific class
subclasses the one users already catch, so ``except`` clauses keep working:

* ``WorkerStopped`` (you stopped or deleted the worker, or stopped the
  reactor) is a ``WorkerCrashed`` (the process died on its own);
* ``ChannelBroken`` (the peer went away or sent a bad stream) is a
  ``ChannelClosed`` (closed here, with ``close()``);
* ``FrameTooLarge`` (this side tried to send a frame over the limit) is a
  ``FrameError`` (bad input from the peer);
* ``ChannelBusy``: a channel used in two ways at once (a caller's mistake).
"""
from __future__ import annotations

from concurrent.futures import BrokenExecutor
from typing import Optional

__all__ = [
    "PacketError",
    "FrameError",
    "FrameTooLarge",
    "CodecError",
    "LineTooLong",
    "PeerCertificateRejected",
    "ProcessFailed",
    "InvalidWorker",
    "WorkerLoadError",
    "WorkerCrashed",
    "WorkerStopped",
    "WorkerError",
    "SerializationError",
    "PoolClosed",
    "IdleTimeout",
    "OutboundOverflow",
    "ChannelClosed",
    "ChannelBroken",
    "ChannelBusy",
    "TaskTimeout",
    "WorkerTimeout",
    "PoolBroken",
    "ReactorError",
    "AddressInUse",
    "ReactorStopping",
    "HTTPRequestError",
    "ClientDisconnected",
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
    """Bad input: a length-prefixed frame received was malformed, cut short or over the size limit.

    The decoder that raised it is left in an error state: the stream it was
    reading cannot be trusted any more and should be closed.
    """


class FrameTooLarge(FrameError):
    """This side asked to send a frame or message over the size limit; nothing was sent.

    The stream is unharmed: send less, or raise the limit on both ends.
    """


class CodecError(PacketError, ValueError):
    """An object could not be encoded or decoded by a connection's codec."""


class LineTooLong(PacketError, ValueError):
    """The peer sent a line longer than the line protocol's ``max_line_length``.

    Its fault: it is not speaking the protocol (or the limit is too small).
    The parser that raised it stays failed; the connection is closed.
    """


class PeerCertificateRejected(PacketError, ConnectionError):
    """A handler's ``ssl_verify_peer`` refused the peer's TLS certificate; the connection was closed."""


class ProcessFailed(PacketError):
    """A program started by ``popen`` exited with a non-zero status or was killed by a signal.

    ``exitcode`` or ``signal`` says which (the other is None); ``pid`` is its pid.
    """

    def __init__(self, message: str, *, pid: Optional[int] = None,
                 exitcode: Optional[int] = None, signal: Optional[int] = None) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.signal = signal


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


class WorkerStopped(WorkerCrashed):
    """The worker was stopped on purpose (``delete_worker``, the reactor's stop) while it
    owed an answer, or before it took the request.

    A ``WorkerCrashed``, so ``except WorkerCrashed`` still catches it; catch
    this one first to tell a deliberate stop from a death.
    """


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
    """A master<->child channel was used after this side closed it with ``close()``."""


class ChannelBroken(ChannelClosed):
    """A master<->child channel was used after the peer went away or sent a bad stream.

    The original error (an OSError, a FrameError...), if any, is the
    ``__cause__``.  A ``ChannelClosed``, so ``except ChannelClosed`` still
    catches it.
    """


class ChannelBusy(PacketError, RuntimeError):
    """A channel was asked to receive in a second way at once: ``start()`` twice, ``recv()``
    on a started channel, or ``recv()`` from two greenlets.  Use one receiver."""


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


class HTTPRequestError(PacketError, ValueError):
    """An HTTP client sent a request the server refuses (malformed, or over a limit).

    ``status`` is the HTTP status answered (400, 408, 413, 414, 431, 501,
    505); the connection is closed after that answer.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ClientDisconnected(PacketError, ConnectionError):
    """The HTTP client went away (or stopped sending) while the app read its body
    or wrote its response; the app should give up on this request."""
