"""packet_gevent: a gevent port of Packet (Ruby's evented networking library).

An EventMachine-style reactor with one greenlet per connection, Packet's
forked UNIX workers, and a fork pool that replaces ``gevent.threadpool``.
Importing this package patches nothing global and starts no process.

The layers (ARCHITECTURE.md): the ground floor (``errors``, ``framing``,
``codec``, ``timers``, ``runner``); the reactor layer (:mod:`.net`), which
knows nothing of processes; the process layer (:mod:`.ipc`); workers
(:mod:`.workers`) and the pool (:mod:`.pool`) on top; and :mod:`.packet`,
the façade whose :class:`Reactor` joins them.  The names above the reactor
layer load on first use, so ``packet_gevent.net`` alone never imports the
code that forks.
"""
from typing import TYPE_CHECKING, Any

from .codec import Codec, JsonCodec
from .errors import (AddressInUse, ChannelBroken, ChannelBusy, ChannelClosed, ClientDisconnected,
                     CodecError, FrameError, FrameTooLarge, HTTPRequestError, IdleTimeout,
                     InvalidWorker, LineTooLong, OutboundOverflow, PacketError,
                     PeerCertificateRejected, PoolBroken, PoolClosed, ProcessFailed, ReactorError,
                     ReactorStopping, SerializationError, TaskTimeout, WorkerCrashed, WorkerError,
                     WorkerLoadError, WorkerStopped, WorkerTimeout)
from .framing import BinParser, FrameDecoder, encode_frame
from .lines import LineParser
from .net.connection import Connection
from .net.lines import LineConnection, LineText2
from .net.reconnect import ReconnectPolicy
from .net.udp import DatagramConnection
from .net.server import Server
from .timers import Timer

if TYPE_CHECKING:  # loaded lazily at run time (see __getattr__)
    from .ipc.blocking import BlockingChannel
    from .ipc.channel import Channel
    from .ipc.process import ChildProcess, spawn_child
    from .packet import Reactor
    from .popen import PopenConnection
    from .pool.executor import ForkPool
    from .pool.remote import RemotePool
    from .pool.futures import Future, TaskResult, as_completed, wait
    from .workers.pimp import Callback, MetaPimp, Pimp
    from .workers.worker import Worker
    from .http.server import WSGIServer

__version__ = "0.1.0"

_LAZY = {
    "Reactor": "packet",
    "PopenConnection": "popen",
    "Worker": "workers.worker",
    "Pimp": "workers.pimp",
    "MetaPimp": "workers.pimp",
    "Callback": "workers.pimp",
    "ForkPool": "pool.executor",
    "RemotePool": "pool.remote",
    "Future": "pool.futures",
    "TaskResult": "pool.futures",
    "wait": "pool.futures",
    "as_completed": "pool.futures",
    "spawn_child": "ipc.process",
    "ChildProcess": "ipc.process",
    "Channel": "ipc.channel",
    "BlockingChannel": "ipc.blocking",
    "WSGIServer": "http.server",
}

__all__ = [
    "Reactor", "Connection", "LineConnection", "LineText2", "DatagramConnection",
    "ReconnectPolicy", "Server", "Timer",
    "LineParser", "BinParser", "FrameDecoder", "encode_frame", "Codec", "JsonCodec",
    "Worker", "Pimp", "MetaPimp", "Callback",
    "PopenConnection", "ForkPool", "RemotePool", "Future", "TaskResult", "wait", "as_completed",
    "spawn_child", "ChildProcess", "Channel", "BlockingChannel",
    "PacketError", "ReactorError", "ReactorStopping", "AddressInUse", "FrameError",
    "FrameTooLarge", "CodecError", "LineTooLong", "PeerCertificateRejected", "ProcessFailed",
    "InvalidWorker", "WorkerLoadError", "WorkerCrashed", "WorkerStopped", "WorkerError",
    "WorkerTimeout", "SerializationError", "PoolClosed", "PoolBroken", "TaskTimeout",
    "IdleTimeout", "OutboundOverflow", "ChannelClosed", "ChannelBroken", "ChannelBusy",
    "WSGIServer", "HTTPRequestError", "ClientDisconnected",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'packet_gevent' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
