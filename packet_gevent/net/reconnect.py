"""Automatic reconnect with back-off (Twisted's ReconnectingClientFactory / ClientService).

``reactor.connect(host, port, Handler, reconnect_policy=ReconnectPolicy(...))``
(or ``reconnect_policy=True`` for the defaults): whenever that connection
ends, by a failed connect or a lost connection, the same instance is
connected again (``Reactor.reconnect``: ``post_init`` is not run again;
each failed attempt gets ``unbind(reason)`` as any failed connect does)
after a delay that grows with each failure in a row::

    delay = min(max_delay, initial_delay * factor ** failures) * (1 ± jitter)

A connection that was established resets the count.  ``max_tries``
failures in a row stop the retries (None: never stop).  ``close_connection()``
(or ``stop_reconnecting()``) and the reactor's stop end them too.  A handler
whose ``unbind`` reconnects by itself (Packet style) is left alone.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Optional, Union

from .transport import CLOSED

__all__ = ["ReconnectPolicy", "Reconnector"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconnectPolicy:
    """When to connect again (seconds); see the module docstring."""

    initial_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 60.0
    #: Each delay is multiplied by a random factor in [1 - jitter, 1 + jitter]
    #: (so many clients cut off at once do not all come back at once).
    jitter: float = 0.1
    #: Failed attempts in a row before giving up; None: retry forever.
    max_tries: Optional[int] = None

    def __post_init__(self) -> None:
        if self.initial_delay < 0 or self.max_delay < 0 or self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ValueError(f"bad reconnect policy {self!r}: need delays >= 0, factor >= 1, "
                             "0 <= jitter <= 1")
        if self.max_tries is not None and self.max_tries < 1:
            raise ValueError(f"max_tries must be >= 1 or None, got {self.max_tries!r}")

    def delay(self, failures: int) -> float:
        """The wait before the next attempt after ``failures`` failed attempts in a row."""
        base = min(self.max_delay, self.initial_delay * self.factor ** min(failures, 64))
        if self.jitter:
            base *= random.uniform(1 - self.jitter, 1 + self.jitter)
        return max(0.0, base)

    @classmethod
    def coerce(cls, value: Union["ReconnectPolicy", bool, dict]) -> "ReconnectPolicy":
        if isinstance(value, cls):
            return value
        if value is True:
            return cls()
        if isinstance(value, dict):
            return cls(**value)
        raise TypeError(f"reconnect_policy must be a ReconnectPolicy, a dict of its fields or True, "
                        f"got {value!r}")


class Reconnector:
    """The reconnect state of one outgoing connection (``conn._pg_reconnect``).  Internal."""

    def __init__(self, reactor: Any, host: Any, port: Any, policy: ReconnectPolicy) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.policy = policy
        self.failures = 0
        self.stopped = False
        self.timer: Any = None

    def stop(self) -> None:
        self.stopped = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def count(self, conn: Any) -> None:
        """Before ``unbind``: count a failed attempt, or reset the count after a live connection."""
        if conn.connect_error is None:
            self.failures = 0  # it was connected: start over
        else:
            self.failures += 1

    def connection_ended(self, conn: Any) -> None:
        """After ``unbind``: schedule the next attempt, if any."""
        transport = conn._transport
        if self.stopped or self.reactor._stopping:
            return
        if transport.state is not CLOSED or not transport.unbind_done:
            return  # unbind reconnected by itself
        if self.policy.max_tries is not None and self.failures >= self.policy.max_tries:
            logger.warning("giving up reconnecting %r to %r:%r after %d failed attempts: %r",
                           conn, self.host, self.port, self.failures, conn.connect_error)
            self.stopped = True
            return
        delay = self.policy.delay(self.failures)
        logger.debug("reconnecting %r to %r:%r in %.3f s", conn, self.host, self.port, delay)
        self.timer = self.reactor.add_timer(delay, self._retry, conn)

    def _retry(self, conn: Any) -> None:
        self.timer = None
        if not self.stopped and not self.reactor._stopping:
            self.reactor.reconnect(self.host, self.port, conn)
