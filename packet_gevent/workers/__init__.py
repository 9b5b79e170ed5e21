"""Packet's workers: forked processes that answer ``ask_worker`` requests.

Built on the process layer (:mod:`packet_gevent.ipc`); a worker process runs
a core reactor of its own.
"""
from .manager import WorkerManager, load_worker_root
from .pimp import Callback, MetaPimp, Pimp
from .worker import Worker

__all__ = ["Worker", "Pimp", "MetaPimp", "Callback", "WorkerManager", "load_worker_root"]
