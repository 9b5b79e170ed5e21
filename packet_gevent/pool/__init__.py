"""The fork pool: a ``concurrent.futures.Executor`` (with gevent ThreadPool's
names) whose tasks run in forked processes and whose waits block only the
calling greenlet.  Built on the process layer."""
from .executor import ForkPool

__all__ = ["ForkPool"]
