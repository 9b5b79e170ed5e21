"""The pools: :class:`PoolAPI` (the public pool API, built on ``submit``) and
:class:`ForkPool`, a ``concurrent.futures.Executor`` with gevent ThreadPool's
names whose tasks run in forked processes and whose waits block only the
calling greenlet (a Scheduler over a process backend; built on the process
layer)."""
from .api import PoolAPI
from .executor import ForkPool

__all__ = ["ForkPool", "PoolAPI"]
