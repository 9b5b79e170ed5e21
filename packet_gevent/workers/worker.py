"""The child side of Packet's workers: the ``Worker`` base class and its process main loop.

A worker class lives in the worker directory (``WORKER_ROOT``)::

    class FooWorker(packet_gevent.Worker):
        worker_name = "foo_worker"          # or FooWorker.set_worker_name("foo_worker")

        def worker_init(self):              # once, in the child, worker_options set
            self.count = 0

        def receive_data(self, request):    # a request dict from the master
            request["data"] = request["data"] * 2
            request["type"] = "response"
            self.send_data(request)         # back to the asking connection

Each worker process runs its own :class:`~packet_gevent.Reactor` on a fresh
hub (``self.reactor``: servers, outgoing connections, timers).  Messages from
the master are handled one at a time, in arrival order, in one greenlet, so
the replies to one connection keep the order of its requests.  An exception
in ``receive_data`` is logged once, at ERROR with its traceback, in the
master's log; a request also gets a ``type="error"`` reply (with the
traceback text); the worker lives on.

SIGINT is ignored (the master decides); SIGTERM makes the worker ask the master
to stop it, which the master does once the requests it sent are answered.

Replies are routed by the ``request_id`` (and ``client_signature``) keys of
the request dict, so the Packet idiom of changing the request and sending it
back works; ``reply(request, data)`` builds such a reply; and a fresh dict
sent with ``send_data`` while a request is being handled gets that request's
routing keys filled in.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import traceback
from typing import Any, Dict, Optional, Tuple

import gevent
import greenlet

from ..ipc.supervision import EXIT_INIT_FAILED, init_failed_message
from ..runner import Mailbox

__all__ = ["Worker", "ROUTING_KEYS", "run_worker"]

logger = logging.getLogger(__name__)

#: Keys that route a reply back to whoever asked.
ROUTING_KEYS = ("request_id", "client_signature", "callback_signature")

# Message kinds on the master <-> worker channel: (kind, payload) tuples.
MSG = "msg"          # both ways: a user dict (request, reply, status...)
STOP = "stop"        # master -> worker: finish what is queued, then exit 0
READY = "ready"      # worker -> master: worker_init done
LOG = "log"          # worker -> master: (level, text) from Worker.log
# worker -> master: INIT_FAILED (ipc.supervision), the traceback text of worker_init
SIGTERMED = "sigterm"  # worker -> master: SIGTERM arrived (not from the master); stop me
_CLOSED = object()   # in the worker's inbox: the channel closed (payload: None or the error)



def camel_name(snake: str) -> str:
    """``foo_worker`` -> ``FooWorker``: Packet's rule from a file or proxy name to its class.

    Inner capitals are kept (``http_APIClient`` -> ``HttpAPIClient``); a name
    that already is CamelCase comes back as it is.
    """
    return "".join(part[:1].upper() + part[1:] for part in snake.split("_"))


def snake_name(class_name: str) -> str:
    """``FooWorker`` -> ``foo_worker`` (Packet's naming rule, reversed)."""
    words = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", class_name)   # HTTPFetch -> HTTP_Fetch
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", words).lower()


class Worker:
    """Base class of Packet workers.  Subclass it in a module of the worker directory."""

    #: Name the master knows this worker by (``ask_worker(name)``); defaults to
    #: the snake-case class name (``FooWorker`` -> ``foo_worker``).
    worker_name: Optional[str] = None
    #: Master-side proxy: a :class:`~packet_gevent.Pimp` subclass, or its
    #: snake-case name (``"foo_handler"`` -> class ``FooHandler``).  None: MetaPimp.
    worker_proxy: Any = None
    #: True: not started with the reactor; start it with ``start_worker``.
    no_auto_load: bool = False
    #: Processes behind this one worker name; requests go to the least busy
    #: (a connection's requests stay on one process while any is pending, so
    #: its replies keep their order).
    pool_size: int = 1

    # Set in the child before worker_init.
    worker_options: Dict[str, Any]
    worker_key: Any = None
    #: Index of this process in its pool (0 .. pool_size-1).
    pool_index: int = 0
    reactor: Any = None

    # ------------------------------------------------- Packet class settings
    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "worker_name" not in cls.__dict__ or cls.__dict__["worker_name"] is None:
            cls.worker_name = snake_name(cls.__name__)
        else:
            cls.worker_name = str(cls.__dict__["worker_name"])
        if not isinstance(cls.pool_size, int) or cls.pool_size < 1:
            raise ValueError(f"{cls.__name__}.pool_size must be an int >= 1, got {cls.pool_size!r}")

    @classmethod
    def set_worker_name(cls, name: Any) -> None:
        cls.worker_name = str(name)

    @classmethod
    def set_worker_proxy(cls, proxy: Any) -> None:
        cls.worker_proxy = proxy

    @classmethod
    def set_no_auto_load(cls, flag: bool = True) -> None:
        cls.no_auto_load = bool(flag)

    # ------------------------------------------------------------- callbacks
    def worker_init(self) -> None:
        """Run once in the child, before any request; ``worker_options`` is set."""

    def receive_data(self, obj: Dict[str, Any]) -> None:
        """A message from the master: a request dict (or a reply to this worker's own request)."""
        raise NotImplementedError(f"{type(self).__name__} does not define receive_data()")

    # --------------------------------------------------------------- methods
    def send_data(self, obj: Dict[str, Any]) -> None:
        """Send a dict to the master (a reply, a status, a request to another worker).

        A response or error without ``request_id``, sent from ``receive_data``
        while it handles a request, gets that request's routing keys.
        """
        if not isinstance(obj, dict):
            raise TypeError(f"send_data takes a dict (with a 'type' key), got {type(obj).__name__}")
        current = self._pg_current
        if (current is not None and current[0] is greenlet.getcurrent() and "request_id" not in obj
                and obj.get("type", "response") in ("response", "error")):
            obj = dict(obj)
            obj.setdefault("type", "response")
            for key in ROUTING_KEYS:
                if key in current[1]:
                    obj[key] = current[1][key]
        self._pg_channel.send((MSG, obj))

    def reply(self, request: Dict[str, Any], data: Any, type: str = "response", **extra: Any) -> None:
        """Answer ``request`` with ``data`` (keeps its routing keys)."""
        message = {key: request[key] for key in ROUTING_KEYS if key in request}
        message.update(extra, type=type, data=data)
        self._pg_channel.send((MSG, message))

    def register_status(self, data: Any) -> None:
        """Packet's status: the master stores ``data`` in ``reactor.result_hash[worker_key]``."""
        self._pg_channel.send((MSG, {"type": "status", "data": data}))

    def send_result(self, data: Any) -> None:
        """A ``type="result"`` message: the master keeps the last one (``pimp.last_result``)."""
        self._pg_channel.send((MSG, {"type": "result", "data": data}))

    def ask_worker(self, worker_name: str, data: Any = None, worker_key: Any = None,
                   **extra: Any) -> None:
        """Send a request to another worker; its reply comes to this worker's receive_data."""
        message = dict(extra, type="request", data=data, requested_worker=worker_name)
        if worker_key is not None:
            message["requested_worker_key"] = worker_key
        self._pg_channel.send((MSG, message))

    def log(self, *args: Any, level: int = logging.INFO) -> None:
        """Log through the master (Packet forwards worker logs to the master)."""
        text = " ".join(str(arg) for arg in args)
        self._pg_channel.send((LOG, (level, text)))

    # Reactor shortcuts, as in Packet (each worker runs its own reactor).
    def start_server(self, *args: Any, **kwargs: Any) -> Any:
        return self.reactor.start_server(*args, **kwargs)

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        return self.reactor.connect(*args, **kwargs)

    def add_timer(self, seconds: float, fn: Any, *args: Any) -> Any:
        return self.reactor.add_timer(seconds, fn, *args)

    def add_periodic_timer(self, seconds: float, fn: Any, *args: Any) -> Any:
        return self.reactor.add_periodic_timer(seconds, fn, *args)

    def cancel_timer(self, timer: Any) -> None:
        timer.cancel()

    @property
    def pid(self) -> int:
        return os.getpid()

    # (greenlet, request) while receive_data handles a request.
    _pg_current: Optional[Tuple[Any, Dict[str, Any]]] = None
    _pg_channel: Any = None

    def __repr__(self) -> str:
        key = "" if self.worker_key is None else f" key={self.worker_key!r}"
        return f"<{type(self).__name__} {self.worker_name}{key} pid={os.getpid()}>"


def error_reply(request: Dict[str, Any], error: str, tb: Optional[str], **extra: Any) -> Dict[str, Any]:
    """The ``type="error"`` reply for ``request``: the request itself (its routing
    keys, data and any other key) with ``type``, ``error`` and ``traceback`` set."""
    reply = dict(request)
    reply.update(extra, type="error", error=error, traceback=tb)
    return reply


def _handle(worker: Worker, message: Dict[str, Any]) -> None:
    is_request = message.get("type") == "request"
    worker._pg_current = (greenlet.getcurrent(), message) if is_request else None
    try:
        worker.receive_data(message)
    except Exception as exc:
        _report_failure(worker, message, is_request, exc)
    finally:
        worker._pg_current = None


def _report_failure(worker: Worker, message: Dict[str, Any], is_request: bool,
                    exc: Exception) -> None:
    """receive_data raised: log it once, at ERROR with the traceback, in the master's log;
    a request gets a ``type="error"`` reply with the same traceback."""
    tb = traceback.format_exc()
    channel = worker._pg_channel
    text = f"receive_data raised on a {message.get('type')!r} message:\n{tb.rstrip()}"
    try:
        channel.send((LOG, (logging.ERROR, text)))
    except Exception:  # the master cannot hear us: this process's own log, then
        logger.error("%r: %s", worker, text)
    if is_request and ("request_id" in message or "client_signature" in message):
        try:
            channel.send((MSG, error_reply(message, f"{type(exc).__name__}: {exc}", tb,
                                           worker=worker.worker_name)))
        except Exception:
            logger.exception("%r: could not send the error reply", worker)


def run_worker(channel: Any, cls: type, worker_key: Any, options: Dict[str, Any],
               pool_index: int, stop_grace: float) -> int:
    """The worker process's main: set up, ``worker_init``, then serve messages until told to stop.

    ``channel`` is this process's end of the master channel (a hub
    :class:`~packet_gevent.ipc.channel.Channel`).  Returns the exit status.
    """
    from ..net.reactor import Reactor

    # SIGINT is ignored here (spawn_child's default): Ctrl-C in a terminal
    # signals the whole process group, and the master decides (it stops us).
    worker = cls()
    worker.worker_options = dict(options)
    worker.worker_key = worker_key
    worker.pool_index = pool_index
    worker._pg_channel = channel
    worker.reactor = reactor = Reactor(stop_grace=stop_grace)
    reactor.start()
    try:
        worker.worker_init()
    except Exception:
        message = init_failed_message()
        tb = message[1]
        try:
            channel.send(message)
            channel.flush(timeout=stop_grace)
        except Exception:
            logger.error("%r: worker_init raised:\n%s", worker, tb)
        reactor.stop(timeout=stop_grace)
        return EXIT_INIT_FAILED
    channel.send((READY, os.getpid()))
    try:
        _serve(worker, channel)
    finally:
        reactor.stop(timeout=stop_grace)
        try:  # replies still queued must reach the master before we exit
            channel.flush(timeout=stop_grace)
        except Exception as exc:  # the master is gone, or stopped reading
            logger.debug("%r: could not flush the channel at exit: %r", worker, exc)
    return 0


def _serve(worker: Worker, channel: Any) -> None:
    """Handle the master's messages in this greenlet, in arrival order, until STOP or EOF.

    The replies sent while handling one batch leave in one write when this
    greenlet goes back to the hub.
    """
    # The channel's read watcher puts (in the hub) every message one read
    # brings; one loop callback per batch switches into this greenlet: 0.3 us
    # less worker CPU per request than a channel.recv() per message (8.6 vs
    # 8.9 us for both ends of a socketpair in one process, 50,000 requests).
    inbox = Mailbox()
    channel.start(inbox.put, lambda exc: inbox.put((_CLOSED, exc)))
    # SIGTERM from outside (an operator, systemd's KillMode=control-group): the master is
    # told and answers with STOP, queued after every request it has sent us, so all of
    # them are answered before we exit 0.
    sigterm = gevent.signal_handler(signal.SIGTERM, _on_sigterm, worker, channel, inbox)
    from ..ipc.process import sigterm_handler_ready
    sigterm_handler_ready()  # one that came during worker_init is delivered now
    try:
        _serve_inbox(worker, inbox)
    finally:
        sigterm.cancel()


def _on_sigterm(worker: Worker, channel: Any, inbox: Mailbox) -> None:
    logger.info("%r: SIGTERM; the master stops it after the requests it has", worker)
    try:
        channel.send((SIGTERMED, os.getpid()))
    except Exception:  # no master to tell: stop on our own after what is queued
        inbox.put((STOP, None))


def _serve_inbox(worker: Worker, inbox: Mailbox) -> None:
    while True:
        kind, payload = inbox.get()
        if kind == MSG:
            _handle(worker, payload)
        elif kind == STOP:
            return
        elif kind is _CLOSED:
            if payload is not None:  # the stream broke (FrameError, SerializationError...)
                raise payload
            logger.debug("%r: the master closed the channel; exiting", worker)
            return
        else:
            logger.warning("%r: unknown message kind %r from the master", worker, kind)
