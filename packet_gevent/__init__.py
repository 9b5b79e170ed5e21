"""packet_gevent: a gevent port of Packet (Ruby's evented networking library).

An EventMachine-style reactor with one greenlet per connection, Packet's
forked UNIX workers, and a fork pool that replaces ``gevent.threadpool``.
Importing this package patches nothing global.

The worker and pool names are loaded on first use, so a plain network
reactor does not import the process machinery.
"""
from typing import Any

from .codec import Codec, JsonCodec
from .net.connection import Connection
from .errors import (ChannelClosed, CodecError, FrameError, IdleTimeout, InvalidWorker,
                     OutboundOverflow, PacketError, PoolBroken, PoolClosed, SerializationError,
                     TaskTimeout, WorkerCrashed, WorkerError, WorkerLoadError)
from .framing import BinParser, FrameDecoder, encode_frame
from .net.reactor import Reactor
from .net.server import Server
from .timers import Timer

__version__ = "0.1.0"

_LAZY = {
    "Worker": "workers",
    "Pimp": "workers",
    "MetaPimp": "workers",
    "Callback": "workers",
    "ForkPool": "pool",
    "spawn_child": "ipc.process",
    "ChildProcess": "ipc.process",
    "Channel": "ipc.channel",
    "BlockingChannel": "ipc.channel",
}

__all__ = [
    "Reactor", "Connection", "Server", "Timer",
    "BinParser", "FrameDecoder", "encode_frame", "Codec", "JsonCodec",
    "Worker", "Pimp", "MetaPimp", "Callback", "ForkPool",
    "spawn_child", "ChildProcess", "Channel", "BlockingChannel",
    "PacketError", "FrameError", "CodecError", "InvalidWorker", "WorkerLoadError",
    "WorkerCrashed", "WorkerError", "SerializationError", "PoolClosed", "PoolBroken", "TaskTimeout",
    "IdleTimeout", "OutboundOverflow", "ChannelClosed",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'packet_gevent' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value
