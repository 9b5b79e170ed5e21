"""Master-side worker proxies (Packet's "pimps"): route what a worker sends, and Callback.

Every running worker has one proxy in the master.  Each dict the worker sends
goes to ``proxy.receive_data(obj)``, called in order, in the proxy's own
long-lived greenlet (never in the hub, so a proxy may block cooperatively).
The default, :class:`MetaPimp`, routes by ``obj["type"]``:

==============  ============================================================
``response``    to whoever asked: the ``callback`` given to ``ask_worker``,
``error``       else ``worker_receive(reply)`` on the asking connection, else
                the asking worker (worker -> worker); settles the request
``request``     with ``requested_worker``: forwarded to that worker; its reply
                comes back to the worker that asked
``status``      stored in ``reactor.result_hash[worker_key or worker_name]``
``result``      kept as ``proxy.last_result``
==============  ============================================================

A worker class picks its own proxy with ``worker_proxy = "foo_handler"`` (the
class ``FooHandler(Pimp)``) and gets full control: override ``handle_object``
and call ``deliver`` / ``forward`` / ``store_status`` as needed.  Error
replies the master makes itself (worker died, reactor stopping) go straight to
``deliver``, so every request is answered even by a proxy that drops replies.
"""
from __future__ import annotations

import itertools
import logging
from typing import Any, Callable, Dict, Type

from .worker import camel_name

__all__ = ["Pimp", "MetaPimp", "Callback", "find_pimp_class"]

logger = logging.getLogger(__name__)

_callback_signatures = itertools.count(1)
_pimp_classes: Dict[str, Type["Pimp"]] = {}


class Callback:
    """A callable to receive a worker's reply (Packet's ``Packet::Callback``).

    ``ask_worker(..., callback=Callback(fn))`` (or any callable) calls
    ``fn(reply)`` instead of ``worker_receive``: in the asking connection's
    greenlet when asked from a connection, else in the worker manager's
    reply-callback greenlet, in reply order; a callback that blocks (say, it
    asks another worker and waits) keeps that greenlet and a fresh one runs
    the callbacks after it.
    """

    __slots__ = ("fn", "signature")

    def __init__(self, fn: Callable[[Dict[str, Any]], Any]) -> None:
        if not callable(fn):
            raise TypeError(f"Callback needs a callable, got {fn!r}")
        self.fn = fn
        self.signature = next(_callback_signatures)

    def invoke(self, reply: Dict[str, Any]) -> Any:
        return self.fn(reply)

    __call__ = invoke

    def __repr__(self) -> str:
        return f"<Callback #{self.signature} {self.fn!r}>"


class Pimp:
    """Base class of worker proxies: plumbing and routing helpers; routing policy in subclasses."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _pimp_classes.setdefault(cls.__name__, cls)

    def __init__(self, manager: Any, worker_name: str, worker_key: Any = None) -> None:
        self.manager = manager
        self.reactor = manager.reactor
        self.worker_name = worker_name
        self.worker_key = worker_key
        #: The last ``type="result"`` message's data.
        self.last_result: Any = None
        # The process the message being handled came from (set by the manager).
        self._source: Any = None
        self.pimp_init()

    # -------------------------------------------------------------- hooks
    def pimp_init(self) -> None:
        """Called once when the proxy is made (before the worker process starts)."""

    def receive_data(self, obj: Dict[str, Any]) -> None:
        """A dict sent by the worker.  Default: ``handle_object(obj)``."""
        self.handle_object(obj)

    def handle_object(self, obj: Dict[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define handle_object(obj) "
                                  f"(or subclass MetaPimp)")

    def worker_exited(self, pid: int, description: str) -> None:
        """A process of this worker has exited (it is restarted if configured)."""

    # ------------------------------------------------------------ helpers
    def deliver(self, reply: Dict[str, Any]) -> bool:
        """Route a reply (``type`` response or error) to whoever asked; False if nobody could get it."""
        return self.manager.route_reply(reply)

    def forward(self, request: Dict[str, Any]) -> None:
        """Send a worker's ``requested_worker`` request on; the reply comes back to that worker."""
        self.manager.forward(self._source, request)

    def store_status(self, data: Any) -> None:
        key = self.worker_key if self.worker_key is not None else self.worker_name
        self.reactor.result_hash[key] = data

    def send_data(self, obj: Dict[str, Any]) -> None:
        """Send a dict to this worker (untracked: no reply is expected)."""
        self.manager.send_untracked(self.worker_name, self.worker_key, obj)

    @property
    def pids(self) -> list:
        """Pids of this worker's live processes."""
        return self.manager.pids(self.worker_name, self.worker_key)

    def __repr__(self) -> str:
        key = "" if self.worker_key is None else f" key={self.worker_key!r}"
        return f"<{type(self).__name__} for {self.worker_name}{key}>"


class MetaPimp(Pimp):
    """The default proxy: routes by ``type`` (see the module docstring)."""

    def handle_object(self, obj: Dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind in ("response", "error"):
            self.process_response(obj)
        elif kind == "request":
            self.process_request(obj)
        elif kind == "status":
            self.process_status(obj)
        elif kind == "result":
            self.process_result(obj)
        else:
            logger.warning("%r: dropped a message of unknown type %r (expected response, error, "
                           "request, status or result)", self, kind)

    def process_response(self, obj: Dict[str, Any]) -> None:
        self.deliver(obj)

    def process_request(self, obj: Dict[str, Any]) -> None:
        if obj.get("requested_worker") is None:
            logger.warning("%r: dropped a request without 'requested_worker' (a worker sends "
                           "requests to other workers with Worker.ask_worker)", self)
            return
        self.forward(obj)

    def process_status(self, obj: Dict[str, Any]) -> None:
        self.store_status(obj.get("data"))

    def process_result(self, obj: Dict[str, Any]) -> None:
        self.last_result = obj.get("data")


def find_pimp_class(proxy: Any, modules: Any = ()) -> Type[Pimp]:
    """The proxy class for a worker's ``worker_proxy``: a Pimp subclass, or a snake-case name.

    ``"foo_handler"`` is looked up as class ``FooHandler`` among the given
    modules (the worker directory's), then every Pimp subclass defined so far.
    """
    if proxy is None:
        return MetaPimp
    if isinstance(proxy, type):
        if issubclass(proxy, Pimp):
            return proxy
        raise TypeError(f"worker_proxy {proxy!r} is not a subclass of packet_gevent.Pimp")
    name = str(proxy)
    class_name = camel_name(name)
    for module in modules:
        candidate = getattr(module, class_name, None)
        if isinstance(candidate, type) and issubclass(candidate, Pimp):
            return candidate
    candidate = _pimp_classes.get(class_name)
    if candidate is not None:
        return candidate
    raise LookupError(f"worker_proxy {name!r}: no Pimp subclass named {class_name!r} found; "
                      f"define 'class {class_name}(packet_gevent.Pimp)' in the worker's module "
                      f"(or set worker_proxy to the class itself)")


