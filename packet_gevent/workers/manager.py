"""WorkerManager, the master side of Packet's workers: run them, route to them, outlive their crashes.

``Reactor(worker_root=path)`` loads the worker classes of ``path``
(:mod:`.loader`) and, when the reactor starts, starts every worker that is
not ``no_auto_load``, each in its own forked process(es)
(:mod:`.process`; the child side is :mod:`.worker`).  The
:class:`WorkerManager` (``reactor.workers``) then:

* sends ``ask_worker`` requests as dicts over each worker's private channel
  (pickled; only ever between this process and its children), tagged with a
  ``request_id`` and the asking connection's ``signature``;
* spreads a ``pool_size = N`` worker's requests over its N processes (least
  pending; a connection's requests stay on one process while any is pending,
  so its replies keep their order);
* hands each dict a worker sends to the worker's proxy (:mod:`.pimp`), in
  order, in the proxy's long-lived greenlet (:mod:`packet_gevent.runner`); reply
  callbacks of requests asked without a connection run in one more such
  greenlet (one that blocks is left its own); no greenlet is spawned per
  message, and the hub never runs user code and never blocks;
* answers every request exactly once: the first ``response``/``error`` reply
  with its ``request_id`` settles it, later ones are dropped (debug log);
  when a worker process dies (uncaught exception, ``os._exit``, a signal)
  each request pending on it gets a ``type="error"`` reply saying how it
  died, and the process is restarted with backoff (``restart_workers=False``
  turns that off);
* requests asked while every process of a worker is down (between a crash
  and the restart) wait in a bounded queue (``MAX_QUEUED``) and go to the
  restarted process; past the bound they are answered with an error at once.
  Requests in flight at a crash are *not* retried (they may have had effects).
  ``ask_worker(..., timeout=s)`` answers a request still unanswered after
  ``s`` seconds with a :class:`~packet_gevent.WorkerTimeout` error reply;
* a worker that receives SIGTERM (an operator, or the whole process group)
  tells us; we send it nothing new and stop it once its requests are
  answered; it is not restarted (unless the reactor is stopping anyway, the
  group goes and asks raise InvalidWorker).  No worker is restarted while
  the reactor stops.

Measured with ``python -m benchmarks.workers`` (Python 3.11, shared 2-core
VM; medians of 8 runs in two sessions):

* ask_worker round trip with a callback, one at a time: p50 39-45 us, p99
  82-105 us when the kernel keeps master and worker on one CPU; p50 118 us,
  p99 ~220 us when each wake-up crosses CPUs.  A bare hub-to-hub Channel
  echo of the same dict takes 31 and 98 us in those two cases: the VM's
  cross-CPU wake-up is most of the second (the kernel picks the case; runs
  of one session differ);
* 20,000 requests in flight: 98k requests/s when master and worker run in
  parallel, 66k when they share a CPU and the costs add up: per request
  ~4.5 us of master CPU to ask (2 of them pickling and framing), ~3.7 to
  route the reply (2 decoding), ~5 in the worker (4 in the channel);
* SIGKILL of a worker to the error reply of its pending request: 1.0-2.3
  ms; to the restarted worker's first answer: 4.6-8 ms.

Workers of a SIGKILLed master were gone 6-10 ms later (PR_SET_PDEATHSIG, and
EOF on the channel as well; measured from a test-like script, 10 runs).
"""
from __future__ import annotations

import collections
import itertools
import logging
import pickle
import types
from typing import Any, Deque, Dict, List, Optional, Tuple

import gevent
import gevent.event

from ..errors import (ChannelClosed, FrameError, InvalidWorker, SerializationError, WorkerCrashed,
                     WorkerError, WorkerStopped, WorkerTimeout)
from ..ipc.supervision import INIT_FAILED, Backoff
from .loader import find_proxy_class, load_worker_root
from .pimp import Callback, MetaPimp, Pimp
from ..runner import SerialRunner
from .worker import LOG, MSG, READY, ROUTING_KEYS, SIGTERMED, Worker, error_reply
from .process import WorkerProcess

__all__ = ["WorkerManager", "Worker", "Pimp", "MetaPimp", "Callback", "load_worker_root",
           "MAX_QUEUED"]

logger = logging.getLogger(__name__)

#: Requests that may wait for a worker while all its processes are down
#: (between a crash and the restart).  A restart takes ~5-10 ms (a fork) after
#: the backoff delay, so this only fills under a crash loop; then asking
#: connections get an error at once instead of queueing without bound.
MAX_QUEUED = 1000
#: Restart delays: the first restart after a healthy run waits
#: RESTART_FIRST_DELAY (none: a fork costs ~5 ms); each further death within
#: RESTART_RESET seconds of its start doubles the delay, from
#: RESTART_MIN_DELAY up to RESTART_MAX_DELAY, so a crash loop costs little.
RESTART_FIRST_DELAY = 0.0
RESTART_MIN_DELAY = 0.1
RESTART_MAX_DELAY = 5.0
RESTART_RESET = 10.0


# ------------------------------------------------------------ bookkeeping
class _Request:
    """One request awaiting its answer."""

    __slots__ = ("rid", "message", "conn_sig", "callback", "asker", "origin", "proc", "timer")

    def __init__(self, rid: int, message: Dict[str, Any], conn_sig: Optional[int],
                 callback: Optional[Callback], asker: Optional[WorkerProcess] = None,
                 origin: Optional[Dict[str, Any]] = None) -> None:
        self.rid = rid
        self.message = message
        self.conn_sig = conn_sig
        self.callback = callback
        self.asker = asker          # the worker process that asked (worker -> worker)
        self.origin = origin        # that worker's own routing keys, restored on the reply
        self.proc: Optional[WorkerProcess] = None
        self.timer: Any = None      # ask_worker(..., timeout=): answers it with WorkerTimeout


class _Group:
    """Everything behind one (worker_name, worker_key): class, proxy, processes."""

    def __init__(self, cls: type, key: Any, options: Dict[str, Any], pool_size: int) -> None:
        self.cls = cls
        self.name: str = cls.worker_name
        self.key = key
        self.options = options
        self.procs: List[Optional[WorkerProcess]] = [None] * pool_size
        self.backoffs: Dict[int, Backoff] = {}   # per index, made at its first death
        self.restart_timers: Dict[int, Any] = {}
        self.waiting: Deque[_Request] = collections.deque()
        self.pimp: Pimp = None  # type: ignore[assignment]
        self.serial = SerialRunner("worker proxy call")
        self.deleted = False

    @property
    def label(self) -> str:
        return self.name if self.key is None else f"{self.name}[{self.key!r}]"

    def live(self) -> List[WorkerProcess]:
        return [proc for proc in self.procs if proc is not None and not proc.closing]


# ----------------------------------------------------------------- manager
class WorkerManager:
    """Loads, starts, supervises and routes to a reactor's workers (``reactor.workers``)."""

    def __init__(self, reactor: Any, worker_root: Optional[str] = None, *,
                 worker_options: Optional[Dict[str, Any]] = None, restart: bool = True,
                 max_message_size: Optional[int] = None) -> None:
        self.reactor = reactor
        self.worker_root = worker_root
        self.worker_options = dict(worker_options or {})
        self.restart = restart
        self.max_message_size = max_message_size
        self.max_queued = MAX_QUEUED
        self.classes: Dict[str, type] = {}
        self.modules: List[types.ModuleType] = []
        self._groups: Dict[Tuple[str, Any], _Group] = {}
        self._pending: Dict[int, _Request] = {}
        self._rids = itertools.count(1)
        self._procs: set = set()            # live (not yet dead) processes
        self._all_dead = gevent.event.Event()
        self._all_dead.set()
        self._stopping = False
        self._loaded = False
        # Reply callbacks of requests asked without a connection, in reply order.
        self._callbacks = SerialRunner("worker reply callback", hold_back=False)

    # ---------------------------------------------------------- loading
    def load(self) -> Dict[str, type]:
        """Import the worker directory (once); return {worker_name: class}."""
        if not self._loaded and self.worker_root is not None:
            classes, modules = load_worker_root(self.worker_root)
            for name, cls in classes.items():
                self.classes.setdefault(name, cls)
            self.modules = modules
        self._loaded = True
        return dict(self.classes)

    def start(self) -> None:
        """Load the directory and start every worker that is not ``no_auto_load``."""
        self.load()
        for name, cls in self.classes.items():
            if not cls.no_auto_load and (name, None) not in self._groups:
                self.start_worker(name)

    # -------------------------------------------------- runtime control
    def start_worker(self, worker: Any = None, worker_key: Any = None, **options: Any) -> Pimp:
        """Start a worker (a loaded name, or a Worker subclass); return its proxy.

        ``options`` update the reactor's ``worker_options`` for this worker
        (``pool_size=N`` overrides the class's pool size).  Starting a
        (worker, worker_key) that runs already is a no-op with a warning.
        Packet's single hash works too: ``start_worker({"worker": "foo_worker",
        "worker_key": k, ...})``.
        """
        if isinstance(worker, dict) and worker_key is None:
            # Packet's one hash: start_worker(:worker => :foo_worker, :worker_key => k, ...)
            options = {**{str(k): v for k, v in worker.items()}, **options}
            worker = options.pop("worker", None)
            worker_key = options.pop("worker_key", None)
        elif isinstance(worker_key, dict):
            raise TypeError(f"start_worker({worker!r}, {{...}}): the second argument is the "
                            f"worker_key; options are keywords in Python: start_worker("
                            f"worker={worker!r}, worker_key=..., pool_size=..., other_option=...)")
        if self._stopping:
            raise InvalidWorker(f"cannot start worker {worker!r}: the reactor is stopping")
        cls = self._worker_class(worker)
        existing = self._groups.get((cls.worker_name, worker_key))
        if existing is not None:
            logger.warning("start_worker: %s is already running; ignored (use another "
                           "worker_key for a second instance)", existing.label)
            return existing.pimp
        pool_size = int(options.pop("pool_size", cls.pool_size))
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        merged = dict(self.worker_options)
        merged.update(options)
        pimp_class = find_proxy_class(cls, self.modules)
        group = _Group(cls, worker_key, merged, pool_size)
        group.pimp = pimp_class(self, cls.worker_name, worker_key)
        self._groups[(group.name, worker_key)] = group
        for index in range(pool_size):
            self._start_proc(group, index)
        logger.info("started worker %s (pids %s)", group.label,
                    ", ".join(str(proc.pid) for proc in group.procs if proc is not None))
        return group.pimp

    def delete_worker(self, worker: Any = None, worker_key: Any = None) -> None:
        """Ask a worker to exit once it has answered what it was asked; no restart.

        New ``ask_worker`` calls raise InvalidWorker at once.  A process that
        has not exited within the reactor's ``stop_grace`` is killed.
        """
        name = worker.worker_name if isinstance(worker, type) else str(worker)
        group = self._groups.pop((name, worker_key), None)
        if group is None:
            raise InvalidWorker(f"delete_worker: worker {name!r} (worker_key={worker_key!r}) "
                                f"is not running; running: {self.running_workers()}")
        group.deleted = True
        self._cancel_restarts(group)
        self._fail_waiting(group, f"worker {group.label} was deleted before it took this request",
                           WorkerStopped)
        for proc in group.procs:
            if proc is not None:
                proc.stop(self.reactor.stop_grace, "deleted by delete_worker")
        logger.info("deleting worker %s", group.label)

    def running_workers(self) -> List[Tuple[str, Any]]:
        return sorted(self._groups, key=repr)

    def pimp(self, worker_name: str, worker_key: Any = None) -> Pimp:
        """The proxy of a running worker."""
        return self._group(worker_name, worker_key).pimp

    def pids(self, worker_name: str, worker_key: Any = None) -> List[int]:
        """Pids of the worker's processes that are up (empty while restarting)."""
        group = self._groups.get((worker_name, worker_key))
        if group is None:
            return []
        return [proc.pid for proc in group.procs if proc is not None and not proc.closing]

    def pending_count(self) -> int:
        """Requests awaiting an answer (in flight or queued)."""
        return len(self._pending)

    # ------------------------------------------------------------ asking
    def ask(self, conn: Any, worker_name: str, data: Any = None, type: str = "request",
            worker_key: Any = None, callback: Any = None, timeout: Optional[float] = None,
            **extra: Any) -> Optional[int]:
        """Send a request to a worker; return its request id.

        The answer goes to ``callback`` if given, else to ``conn.worker_receive``.
        Only a ``type="request"`` with somebody to answer (a connection or a
        callback) is tracked (answered exactly once, an error if the worker
        dies); anything else is sent as is, without ``request_id`` (None is
        returned), and a reply to it is routed by ``client_signature`` alone.
        ``timeout`` (seconds, tracked requests only): without a reply by then,
        the request is answered with a ``type="error"`` reply carrying a
        :class:`~packet_gevent.WorkerTimeout`; a later reply is dropped.
        Raises InvalidWorker if the worker is not running, SerializationError
        if the message cannot be pickled, FrameError if it is over
        ``max_message_size``.
        """
        if timeout is not None and not timeout > 0:
            raise ValueError(f"ask_worker timeout must be > 0 seconds (or None), got {timeout!r}")
        group = self._group(worker_name, worker_key)
        cb: Optional[Callback] = None
        if callback is not None:
            cb = callback if isinstance(callback, Callback) else Callback(callback)
        message = {**extra, "type": type, "data": data, "worker": worker_name,
                   "worker_key": worker_key}
        conn_sig = None
        if conn is not None:
            conn_sig = message["client_signature"] = conn.signature
        if cb is not None:
            message["callback_signature"] = cb.signature
        if type != "request" or (conn is None and cb is None):
            self._send_untracked(group, message)
            return None
        rid = message["request_id"] = next(self._rids)
        request = _Request(rid, message, conn_sig, cb)
        self._pending[rid] = request
        if timeout is not None:
            request.timer = gevent.get_hub().loop.timer(timeout)
            request.timer.start(gevent.spawn_raw, self._timed_out, request, group, timeout)
        try:
            self._dispatch(group, request)
        except BaseException:
            self._pending.pop(rid, None)
            self._cancel_timer(request)
            raise
        return rid

    def _timed_out(self, request: _Request, group: _Group, timeout: float) -> None:
        request.timer = None
        if self._pending.get(request.rid) is not request:
            return  # answered meanwhile
        del self._pending[request.rid]
        self._settle(request)
        try:
            group.waiting.remove(request)
        except ValueError:
            pass
        text = (f"WorkerTimeout: worker {group.label} did not answer request {request.rid} within "
                f"{timeout} s (ask_worker timeout); a later reply will be dropped")
        logger.warning("%s", text)
        self._answer(request, self._master_error(request, text, WorkerTimeout(text)))

    @staticmethod
    def _cancel_timer(request: _Request) -> None:
        timer, request.timer = request.timer, None
        if timer is not None:
            timer.close()

    def send_untracked(self, worker_name: str, worker_key: Any, message: Dict[str, Any]) -> None:
        """Send a dict to a worker, expecting no answer (Pimp.send_data)."""
        self._send_untracked(self._group(worker_name, worker_key), message)

    def forward(self, source: Optional[WorkerProcess], request: Dict[str, Any]) -> None:
        """Worker -> worker: send ``request`` to its ``requested_worker``; reply to ``source``."""
        name = request.get("requested_worker")
        key = request.get("requested_worker_key")
        rid = next(self._rids)
        origin = {k: request[k] for k in ROUTING_KEYS if k in request}
        message = {k: v for k, v in request.items() if k not in ROUTING_KEYS}
        message.update(request_id=rid, worker=name, worker_key=key)
        if source is not None:
            message["from_worker"] = source.group.name
            message["from_worker_key"] = source.group.key
        req = _Request(rid, message, None, None, asker=source, origin=origin)
        group = self._groups.get((name, key))
        if group is None:
            text = (f"InvalidWorker: worker {name!r} (worker_key={key!r}) is not running; "
                    f"running: {self.running_workers()}")
            self._answer(req, error_reply(message, text, None, exception=InvalidWorker(text)))
            return
        self._pending[rid] = req
        self._dispatch(group, req)

    def route_reply(self, reply: Dict[str, Any]) -> bool:
        """Answer the request ``reply`` belongs to (Pimp.deliver); False if dropped."""
        rid = reply.get("request_id")
        if rid is None:
            signature = reply.get("client_signature")
            if signature is not None:
                return self._to_connection(signature, reply)
            logger.debug("dropped a %r reply without request_id or client_signature", reply.get("type"))
            return False
        request = self._pending.pop(rid, None)
        if request is None:
            logger.debug("dropped a %r reply for request %r: it was answered already "
                         "(or its worker died first)", reply.get("type"), rid)
            return False
        self._settle(request)
        if reply.get("type") == "error" and "exception" not in reply:
            reply["exception"] = WorkerError(str(reply.get("error")),
                                             remote_traceback=reply.get("traceback"))
        return self._answer(request, reply)

    # ------------------------------------------------------- internals
    def _worker_class(self, worker: Any) -> type:
        if isinstance(worker, type) and issubclass(worker, Worker):
            self.classes.setdefault(worker.worker_name, worker)
            return worker
        if worker is None:
            raise ValueError("start_worker needs worker=<worker name or Worker subclass>")
        self.load()
        cls = self.classes.get(str(worker))
        if cls is None:
            if self.worker_root is None:
                raise InvalidWorker(
                    f"no worker class named {str(worker)!r}: this reactor has no worker directory "
                    f"(worker_root=None and no WORKER_ROOT set){self._known()}; pass "
                    f"Reactor(worker_root=DIR) with a module defining it, or "
                    f"start_worker(worker=TheWorkerClass)")
            raise InvalidWorker(f"no worker class named {str(worker)!r} in {self.worker_root!r}"
                                f"{self._known()}; check its worker_name (set_worker_name) or "
                                f"pass start_worker(worker=TheWorkerClass)")
        return cls

    def _known(self) -> str:
        names = sorted(self.classes)
        return f" (known workers: {', '.join(names)})" if names else " (no worker classes known)"

    def _group(self, worker_name: Any, worker_key: Any) -> _Group:
        group = self._groups.get((str(worker_name), worker_key))
        if group is None:
            raise InvalidWorker(f"worker {str(worker_name)!r} (worker_key={worker_key!r}) is not "
                                f"running; running: {self.running_workers()}; start it with "
                                f"start_worker(worker=..., worker_key=...)")
        return group

    def _pick(self, group: _Group, conn_sig: Optional[int]) -> Optional[WorkerProcess]:
        procs = group.procs
        if len(procs) == 1:
            proc = procs[0]
            return None if proc is None or proc.closing else proc
        live = group.live()
        if not live:
            return None
        if conn_sig is not None and len(live) > 1:
            for proc in live:
                if proc.per_conn.get(conn_sig):
                    return proc
        return min(live, key=lambda proc: len(proc.inflight))

    def _dispatch(self, group: _Group, request: _Request) -> None:
        proc = self._pick(group, request.conn_sig)
        if proc is not None:
            self._send_request(proc, request)
            return
        if len(group.waiting) >= self.max_queued:
            self._pending.pop(request.rid, None)
            text = (f"worker {group.label} is down and {len(group.waiting)} requests are already "
                    f"waiting for its restart")
            self._answer(request, self._master_error(request, text, WorkerCrashed(text)))
            return
        _check_picklable(request.message)
        group.waiting.append(request)

    def _send_request(self, proc: WorkerProcess, request: _Request) -> None:
        request.proc = proc
        proc.inflight[request.rid] = request
        if request.conn_sig is not None:
            proc.per_conn[request.conn_sig] += 1
        try:
            proc.channel.send((MSG, request.message))
        except (SerializationError, FrameError) as exc:  # unpicklable, or over max_message_size
            self._settle(request)
            self._pending.pop(request.rid, None)
            if isinstance(exc, SerializationError):
                raise _unpicklable(proc.group.name, exc.__cause__ or exc) from exc.__cause__
            raise
        except ChannelClosed as exc:
            # The process is dying; its death answers the request.
            logger.debug("send to %s (pid %d) failed: %r", proc.group.label, proc.pid, exc)

    def _send_untracked(self, group: _Group, message: Dict[str, Any]) -> None:
        proc = self._pick(group, None)
        if proc is None:
            logger.warning("dropped a %r message for %s: no process is up", message.get("type"),
                           group.label)
            return
        try:
            proc.channel.send((MSG, message))
        except ChannelClosed as exc:
            logger.debug("send to %s (pid %d) failed: %r", group.label, proc.pid, exc)

    def _settle(self, request: _Request) -> None:
        if request.timer is not None:
            self._cancel_timer(request)
        proc = request.proc
        if proc is not None:
            proc.inflight.pop(request.rid, None)
            if request.conn_sig is not None:
                left = proc.per_conn[request.conn_sig] - 1
                if left > 0:
                    proc.per_conn[request.conn_sig] = left
                else:
                    del proc.per_conn[request.conn_sig]

    def _answer(self, request: _Request, reply: Dict[str, Any]) -> bool:
        if request.timer is not None:
            self._cancel_timer(request)
        if request.callback is not None:
            if request.conn_sig is not None and self.reactor.deliver(request.conn_sig,
                                                                    request.callback, reply):
                return True
            self._callbacks.post(request.callback, reply)
            return True
        if request.asker is not None:
            return self._to_worker(request, reply)
        if request.conn_sig is not None:
            return self._to_connection(request.conn_sig, reply)
        return False

    def _to_connection(self, signature: int, reply: Dict[str, Any]) -> bool:
        conn = self.reactor.connections.get(signature)
        if conn is None or not self.reactor.deliver(signature, conn.worker_receive, reply):
            logger.debug("dropped a %r reply for connection #%s: it has gone",
                         reply.get("type"), signature)
            return False
        return True

    def _to_worker(self, request: _Request, reply: Dict[str, Any]) -> bool:
        asker = request.asker
        if asker is None or asker.closing:
            logger.debug("dropped a %r reply for a worker that has gone", reply.get("type"))
            return False
        reply = {k: v for k, v in reply.items() if k not in ROUTING_KEYS and k != "exception"}
        reply.update(request.origin or {})
        try:
            asker.channel.send((MSG, reply))
        except Exception as exc:
            logger.warning("could not pass a reply on to %s (pid %d): %r", asker.group.label,
                           asker.pid, exc)
            return False
        return True

    def _master_error(self, request: _Request, text: str, exc: BaseException) -> Dict[str, Any]:
        return error_reply(request.message, text, None, worker=request.message.get("worker"),
                           worker_key=request.message.get("worker_key"), exception=exc)

    def _fail_waiting(self, group: _Group, text: str,
                      error: type = WorkerCrashed) -> None:
        while group.waiting:
            request = group.waiting.popleft()
            self._pending.pop(request.rid, None)
            self._answer(request, self._master_error(request, text, error(text)))

    # ------------------------------------------------- process lifecycle
    def _start_proc(self, group: _Group, index: int) -> None:
        group.restart_timers.pop(index, None)
        proc = WorkerProcess(group, index, stop_grace=self.reactor.stop_grace,
                             max_message_size=self.max_message_size,
                             on_message=self._on_message, on_dead=self._on_dead)
        group.procs[index] = proc
        self._procs.add(proc)
        self._all_dead.clear()
        while group.waiting and self._pick(group, None) is not None:
            request = group.waiting.popleft()
            self._dispatch(group, request)

    def _on_message(self, proc: WorkerProcess, item: Any) -> None:  # in the hub
        try:
            kind, payload = item
        except (TypeError, ValueError):
            logger.warning("%s (pid %d) sent a malformed message %r", proc.group.label, proc.pid, item)
            return
        group = proc.group
        if kind == MSG:
            if isinstance(payload, dict):
                group.serial.post(self._to_pimp, group.pimp, proc, payload)
            else:
                logger.warning("%s (pid %d) sent a %s, not a dict; dropped", group.label, proc.pid,
                               type(payload).__name__)
        elif kind == READY:
            logger.debug("worker %s (pid %d) is ready", group.label, proc.pid)
        elif kind == LOG:
            level, text = payload
            logging.getLogger(f"{__package__}.{group.name}").log(level, "[%s pid %d] %s",
                                                               group.label, proc.pid, text)
        elif kind == SIGTERMED:
            if not proc.stopping and not getattr(proc, "stopped_by_sigterm", False):
                logger.info("worker %s (pid %d) received SIGTERM: stopping it once its %d requests "
                            "in flight are answered", group.label, proc.pid, len(proc.inflight))
                proc.stopped_by_sigterm = True
                proc.closing = True  # no new requests
                gevent.spawn(self._stop_when_answered, proc, self.reactor.stop_grace)
        elif kind == INIT_FAILED:
            logger.error("worker %s (pid %d): worker_init raised:\n%s", group.label, proc.pid, payload)
        else:
            logger.warning("%s (pid %d) sent an unknown message kind %r", group.label, proc.pid, kind)

    #: After a worker reports SIGTERM, how long the master gives a SIGTERM sent to the
    #: whole process group to reach it too (then the stop is the reactor's, not an operator's).
    GROUP_SIGNAL_WAIT = 0.05

    def _stop_when_answered(self, proc: WorkerProcess, grace: float) -> None:
        loop = gevent.get_hub().loop
        deadline = loop.now() + grace
        gevent.sleep(self.GROUP_SIGNAL_WAIT)
        if not self._master_stopping():
            logger.warning("worker %s (pid %d) received SIGTERM, not from the master (an "
                           "operator?): it stops once its %d requests in flight are answered and "
                           "is not restarted", proc.group.label, proc.pid, len(proc.inflight))
        while proc.inflight and not proc.dead and loop.now() < deadline:
            gevent.sleep(0.01)
        if not proc.dead and not proc.stopping:
            proc.stop(max(0.5, deadline - loop.now()), "stopped: it received SIGTERM")

    @staticmethod
    def _to_pimp(pimp: Pimp, proc: WorkerProcess, payload: Dict[str, Any]) -> None:
        pimp._source = proc
        try:
            pimp.receive_data(payload)
        finally:
            pimp._source = None

    def _on_dead(self, proc: WorkerProcess) -> None:  # in the hub
        # After the messages it sent before dying, which the proxy may still be handling.
        proc.group.serial.post(self._proc_died, proc)

    def _proc_died(self, proc: WorkerProcess) -> None:  # in the group's serial greenlet
        text = proc.finish()
        group = proc.group
        self._procs.discard(proc)
        if group.procs[proc.index] is proc:
            group.procs[proc.index] = None
        requests = list(proc.inflight.values())
        proc.inflight.clear()
        proc.per_conn.clear()
        for request in requests:
            self._pending.pop(request.rid, None)
            error = WorkerStopped if proc.stopping else WorkerCrashed
            crashed = error(text, pid=proc.pid, exitcode=proc.exitcode, signal=proc.signal)
            self._answer(request, self._master_error(request, text, crashed))
        try:
            group.pimp.worker_exited(proc.pid, text)
        except Exception:
            logger.exception("%r.worker_exited raised", group.pimp)
        if proc.stopping:
            logger.log(logging.WARNING if requests else logging.DEBUG, "%s%s", text,
                       f"; {len(requests)} requests answered with an error" if requests else "")
            if getattr(proc, "stopped_by_sigterm", False) and not self._master_stopping() \
                    and not group.deleted and not any(p is not None for p in group.procs):
                # Its group is gone, as after delete_worker: asks fail at once with
                # InvalidWorker instead of waiting for a restart that never comes.
                if self._groups.get((group.name, group.key)) is group:
                    del self._groups[(group.name, group.key)]
                self._fail_waiting(group, f"{text}; not restarted")
        else:
            self._after_crash(group, proc, text, len(requests))
        if not self._procs:
            self._all_dead.set()

    def _master_stopping(self) -> bool:
        return self._stopping or bool(getattr(self.reactor, "_stopping", False))

    def _after_crash(self, group: _Group, proc: WorkerProcess, text: str, failed: int) -> None:
        lost = f"; {failed} pending requests answered with an error" if failed else ""
        if group.deleted or self._master_stopping():
            logger.info("%s%s", text, lost)
            return
        if not self.restart:
            logger.error("%s%s; not restarted (restart_workers=False)", text, lost)
            if not any(p is not None for p in group.procs):
                self._groups.pop((group.name, group.key), None)
                self._fail_waiting(group, f"{text}; not restarted (restart_workers=False)")
            return
        loop = gevent.get_hub().loop
        delay = self._backoff(group, proc.index).delay(loop.now() - proc.started_at)
        logger.error("%s%s; restarting in %.2f s", text, lost, delay)
        timer = loop.timer(delay)
        group.restart_timers[proc.index] = timer
        timer.start(self._restart, group, proc.index)

    @staticmethod
    def _backoff(group: _Group, index: int) -> Backoff:
        backoff = group.backoffs.get(index)
        if backoff is None:
            backoff = group.backoffs[index] = Backoff(
                RESTART_MIN_DELAY, RESTART_MAX_DELAY, RESTART_RESET, first=RESTART_FIRST_DELAY)
        return backoff

    def _restart(self, group: _Group, index: int) -> None:  # in the hub (timer)
        timer = group.restart_timers.pop(index, None)
        if timer is not None:
            timer.close()
        if group.deleted or self._stopping or group.procs[index] is not None:
            return
        gevent.spawn_raw(self._restart_in_greenlet, group, index)

    def _restart_in_greenlet(self, group: _Group, index: int) -> None:
        if group.deleted or self._stopping or group.procs[index] is not None:
            return
        try:
            self._start_proc(group, index)
        except Exception as exc:
            logger.exception("restarting worker %s failed", group.label)
            self._backoff(group, index).failed()
            timer = gevent.get_hub().loop.timer(RESTART_MAX_DELAY)
            group.restart_timers[index] = timer
            timer.start(self._restart, group, index)
            if not group.live():
                self._fail_waiting(group, f"restarting worker {group.label} failed: {exc!r}")
            return
        logger.info("restarted worker %s (pid %d)", group.label, group.procs[index].pid)

    def _cancel_restarts(self, group: _Group) -> None:
        for timer in group.restart_timers.values():
            timer.close()
        group.restart_timers.clear()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every worker: ask, wait up to ``timeout``, then kill; answer what is left."""
        self._stopping = True
        for group in list(self._groups.values()):
            self._cancel_restarts(group)
            self._fail_waiting(group, f"reactor stopped before worker {group.label} took this request",
                               WorkerStopped)
        for proc in list(self._procs):
            if not proc.stopping:
                proc.stop(max(timeout, 0.0), "stopped with the reactor")
        # Kill timers fire at the deadline; after them the exits come within ms.
        if not self._all_dead.wait(max(timeout, 0.0) + 2.0):
            for proc in list(self._procs):
                logger.error("worker %s (pid %d) did not exit after SIGKILL", proc.group.label, proc.pid)
        for request in list(self._pending.values()):
            self._pending.pop(request.rid, None)
            self._settle(request)
            text = "reactor stopped before the worker replied"
            self._answer(request, self._master_error(request, text, WorkerStopped(text)))
        self._groups.clear()


def _check_picklable(message: Dict[str, Any]) -> None:
    try:
        pickle.dumps(message, protocol=5)
    except Exception as exc:
        raise _unpicklable(message.get("worker"), exc) from exc


def _unpicklable(worker_name: Any, cause: BaseException) -> SerializationError:
    return SerializationError(
        f"ask_worker({worker_name!r}): the request cannot be pickled for the worker process: "
        f"{type(cause).__name__}: {cause}. Send plain data (str, numbers, lists, dicts, "
        f"instances of importable classes)")
