"""The channel's hub end: framed object messages to a child over our socketpair, in a gevent hub.

These channels are private to our own process tree: they run on the AF_UNIX
socketpair that :func:`~packet_gevent.ipc.process.spawn_child` creates and
they unpickle what they receive, so they must never be used on a network
socket (the constructor refuses anything but AF_UNIX).  The message format
is :mod:`.wire`'s (pickle protocol 5, big buffers out of band:
:mod:`.pickling`); the other end is a :class:`Channel` too (a worker runs a
hub) or a :class:`~packet_gevent.ipc.blocking.BlockingChannel` (a pool
process runs none).

:class:`Channel`: ``send`` never blocks, frames queued during one loop turn
leave in one ``sendmsg``, big buffers go to the kernel straight from the
caller's object; receiving is callbacks from a persistent read watcher
(``start``) or a cooperative ``recv``.  Writable buffers are copied once at
``send()`` (the caller may change them before the kernel takes them);
``bytes`` are immutable and never copied on send.

Measured with ``python -m benchmarks.channel`` (Python 3.11, shared 2-core
VM, master Channel in its hub, child BlockingChannel echoing):

* round trip of one int, p50: 14-28 us when the scheduler keeps both
  processes close, 62-84 us when each wake-up crosses CPUs (the VM's IPI
  cost: a bare gevent-socket echo measures 17 us pinned, 50-59 us unpinned);
* tiny messages echoed in batches of 500: 135k-203k msg/s (each message is
  encoded and decoded twice: master and child);
* 16 MiB ``bytes`` each way, median of 8 round trips: 1,550-1,690 MiB/s,
  the first 1,360-1,530 (the kernel's first-touch page faults of fresh
  receive memory, ~2 us per 4 KiB page), the best 3,700-4,760 (malloc
  reuses the freed blocks: no page faults);
* 16 MiB ``bytearray`` each way: 540-1,420 MiB/s, pickled in band (a copy
  into the pickle, one out of it).
"""
from __future__ import annotations

import collections
import logging
from itertools import islice
from typing import Any, Callable, Deque, Iterable, List, Optional

import gevent
import gevent.event
from gevent.timeout import Timeout

from ..errors import ChannelBroken, ChannelBusy, ChannelClosed, FrameError, SerializationError
from .pickling import OOB_THRESHOLD
from .wire import (CUT_SHORT, DEFAULT_MAX_MESSAGE_SIZE, DIRECT_RECV_MIN, IOV_MAX, READ_SIZE, Chunk,
                   MessageDecoder, MessageEncoder, consume, own_socket)

__all__ = ["Channel", "DEFAULT_MAX_MESSAGE_SIZE", "OOB_THRESHOLD", "READ_BUDGET"]

logger = logging.getLogger(__name__)

#: Bytes one readable event may consume before the hub serves others.
READ_BUDGET = 4 * 1024 * 1024

_READ, _WRITE = 1, 2


class Channel:
    """Object messages over a socketpair, for a process that runs a gevent hub.

    ``send`` never blocks: it pickles now (SerializationError if it cannot,
    and the channel stays usable), queues the frames and flushes them in one
    ``sendmsg`` when the current greenlet yields to the hub; what the kernel
    does not take is written by a write watcher, in order.

    Receive either with ``start(on_message, on_close)`` (callbacks in the hub
    from a persistent read watcher; ``on_close(exc_or_None)`` exactly once,
    also after ``close()``) or with ``recv()`` from one greenlet; not both.
    A bad frame or an unpicklable message closes the channel with that error.
    The channel takes over ``sock`` (it is detached).
    """

    def __init__(self, sock: Any, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 dumps: Optional[Callable[[Any], bytes]] = None,
                 loads: Optional[Callable[[bytes], Any]] = None) -> None:
        if (dumps is None) != (loads is None):
            raise ValueError("pass both dumps and loads, or neither (pickle protocol 5)")
        self._sock = own_socket(sock, blocking=False)
        self._fd = self._sock.fileno()
        self._encoder = MessageEncoder(max_message_size, dumps)
        self._inbound = MessageDecoder(max_message_size, loads)
        self._rbuf = bytearray(READ_SIZE)
        self._rview = memoryview(self._rbuf)
        self._hub = gevent.get_hub()
        self._loop = self._hub.loop
        self._out: Deque[Chunk] = collections.deque()
        self._small: List[bytes] = []
        self._pending = 0
        self._flush_scheduled = False
        self._drained: Optional[gevent.event.Event] = None
        self._reader = self._loop.io(self._fd, _READ)
        self._writer = self._loop.io(self._fd, _WRITE)
        self._inbox: Deque[Any] = collections.deque()
        self._on_message: Optional[Callable[[Any], Any]] = None
        self._on_close: Optional[Callable[[Optional[BaseException]], Any]] = None
        self._receiving = False
        self._closed = False
        self._closed_by_us = False
        self._close_exc: Optional[BaseException] = None
        self._write_exc: Optional[BaseException] = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._fd}"
        return f"<Channel {state} pending={self._pending}>"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending_bytes(self) -> int:
        """Bytes queued by send() that the kernel has not taken yet."""
        return self._pending

    def fileno(self) -> int:
        return self._fd

    # -- sending -------------------------------------------------------------------
    def send(self, obj: Any, now: bool = False) -> None:
        """Queue ``obj``; raises SerializationError (channel unharmed) or ChannelClosed.

        ``now``: if nothing else is queued, write it at once instead of when
        the greenlet yields (a lone request the peer should start on while
        this side goes on; what the kernel does not take is queued as usual).
        """
        self._check_can_send()
        chunks, size = self._encoder.encode(obj)
        if now and not self._pending and not self._writer.active:
            self._flush_scheduled = True  # no callback: _flush runs here (and clears it)
            self._queue(chunks, size)
            self._flush()
            return
        self._queue(chunks, size)

    def send_many(self, objs: Iterable[Any]) -> None:
        """Queue several objects, all or none: one that cannot be pickled queues none.

        ``send`` per object coalesces just as well; use it when each object
        should fail alone.
        """
        self._check_can_send()
        encoded = []
        for index, obj in enumerate(objs):
            try:
                encoded.append(self._encoder.encode(obj))
            except SerializationError as exc:
                raise SerializationError(f"message {index} of the batch: {exc}") from exc.__cause__
        for chunks, size in encoded:
            self._queue(chunks, size)

    def flush(self, timeout: Optional[float] = None) -> None:
        """Block the calling greenlet until everything queued was written.

        Raises ChannelClosed if the channel closes first, TimeoutError after
        ``timeout`` seconds.
        """
        if self._pending and not self._closed:
            if self._drained is None:
                self._drained = gevent.event.Event()
            self._schedule_flush()
            if not self._drained.wait(timeout):
                raise TimeoutError(f"{self._pending} bytes still queued after {timeout} s; "
                                   f"the peer is not reading")
        if self._pending or self._write_exc is not None:
            self._check_can_send()

    def _check_can_send(self) -> None:
        if self._closed or self._write_exc is not None:
            raise self._closed_error("send")

    def _closed_error(self, what: str) -> ChannelClosed:
        """ChannelClosed if this side closed the channel, else ChannelBroken (the peer's doing)."""
        if self._closed_by_us and self._write_exc is None:
            return ChannelClosed(f"cannot {what}: this side closed the channel")
        why = self._write_exc or self._close_exc
        error = ChannelBroken(
            f"cannot {what}: the other process " + (f"broke the channel ({why})" if why else
                                                   "closed the channel (it exited or closed its end)"))
        error.__cause__ = why
        return error

    def _queue(self, chunks: List[Chunk], size: int) -> None:
        if len(chunks) == 1:
            self._small.append(chunks[0])  # type: ignore[arg-type]
        else:
            self._move_small()
            self._out.extend(chunks)
        self._pending += size
        self._schedule_flush()

    def _move_small(self) -> None:
        if self._small:
            small = self._small
            self._out.append(small[0] if len(small) == 1 else b"".join(small))
            self._small = []

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and not self._writer.active:
            self._flush_scheduled = True
            self._loop.run_callback(self._flush)

    def _flush(self) -> None:
        """Write what the kernel takes; park the rest on the write watcher."""
        self._flush_scheduled = False
        if self._closed or self._write_exc is not None:
            return
        self._move_small()
        out, sock = self._out, self._sock
        try:
            while out:
                if len(out) == 1:
                    sent = sock.send(out[0])
                else:
                    sent = sock.sendmsg(list(islice(out, 0, IOV_MAX)))
                self._pending -= sent
                consume(out, sent)
        except BlockingIOError:
            if not self._writer.active:
                self._writer.start(self._flush)
            return
        except OSError as exc:
            self._broken_write(exc)
            return
        if self._writer.active:
            self._writer.stop()
        if self._drained is not None:
            self._drained.set()
            self._drained = None

    def _broken_write(self, exc: OSError) -> None:
        # The peer is gone or stopped reading for good.  Keep reading: it may
        # have sent replies before it died, and its EOF closes the channel.
        logger.debug("channel fd %d: write failed: %s", self._fd, exc)
        self._write_exc = exc
        self._out.clear()
        self._small = []
        self._pending = 0
        if self._writer.active:
            self._writer.stop()
        if self._drained is not None:
            self._drained.set()
            self._drained = None

    # -- receiving: callbacks -------------------------------------------------------
    def start(self, on_message: Callable[[Any], Any],
              on_close: Callable[[Optional[BaseException]], Any]) -> None:
        """Deliver each message to ``on_message(obj)`` in the hub; must not block.

        ``on_close(exc_or_None)`` runs once when the channel closes: None at a
        clean EOF or after ``close()``, else the error (FrameError,
        SerializationError, OSError, or what ``on_message`` raised).
        """
        if self._closed:
            raise self._closed_error("start")
        if self._on_message is not None or self._receiving:
            raise ChannelBusy("this channel is already receiving: start() it once, or use recv()")
        self._on_message, self._on_close = on_message, on_close
        self._reader.start(self._on_readable)
        if self._inbox:  # messages a recv() call buffered
            self._loop.run_callback(self._on_readable)

    def _on_readable(self) -> None:
        try:
            eof = self._read_available()
        except Exception as exc:
            eof, failure = False, exc
        else:
            failure = None
        inbox, on_message = self._inbox, self._on_message
        while inbox and not self._closed:
            try:
                on_message(inbox.popleft())  # type: ignore[misc]
            except Exception as exc:
                logger.exception("channel fd %d: on_message callback raised; closing", self._fd)
                self._shutdown(exc)
                return
        if failure is not None:
            self._shutdown(failure)
        elif eof:
            self._shutdown(None)

    # -- receiving: cooperative ------------------------------------------------------
    def recv(self, timeout: Optional[float] = None) -> Any:
        """Return the next message, blocking only the calling greenlet.

        Raises EOFError at a clean EOF, the stream's error (FrameError,
        SerializationError...) if it failed, ChannelClosed after close(),
        TimeoutError after ``timeout`` seconds (no message is lost).
        """
        if self._on_message is not None:
            raise ChannelBusy("recv() cannot be used on a channel started with callbacks")
        if self._receiving:
            raise ChannelBusy("another greenlet is already receiving on this channel; "
                              "receive in one greenlet")
        self._receiving = True
        timer = Timeout._start_new_or_dummy(
            timeout, TimeoutError(f"no message within {timeout} s"))
        try:
            while not self._inbox:
                if self._closed:
                    raise self._recv_error()
                # Wait first: reading first costs an EAGAIN syscall in the
                # usual request/reply pattern; data already there makes the
                # wait return at once.
                self._hub.wait(self._reader)
                try:
                    eof = self._read_available()
                except Exception as exc:
                    self._shutdown(exc)
                    continue
                if eof:
                    self._shutdown(None)
            return self._inbox.popleft()
        finally:
            timer.close()
            self._receiving = False

    def _recv_error(self) -> BaseException:
        if self._closed_by_us:
            return ChannelClosed("cannot recv: the channel was closed")
        if self._close_exc is not None:
            return self._close_exc
        return EOFError("the other process closed the channel")

    # -- reading core --------------------------------------------------------------------
    def _read_available(self) -> bool:
        """Read and decode what the socket has now (up to READ_BUDGET); True at EOF."""
        sock, inbound, decoder = self._sock, self._inbound, self._inbound.decoder
        budget = READ_BUDGET
        while budget > 0:
            # Big payloads are received straight into the bytes object the
            # decoder hands out; the view is released before commit() so that
            # object goes out without a copy (see FrameDecoder.commit).
            view = (decoder.payload_buffer_remaining()
                    if decoder.payload_missing >= DIRECT_RECV_MIN else None)
            try:
                n = sock.recv_into(self._rbuf if view is None else view)
            except BlockingIOError:
                return False
            except CUT_SHORT:
                n = 0
            finally:
                if view is not None:
                    view.release()
            if not n:
                inbound.eof()
                return True
            frames = decoder.feed(self._rview[:n]) if view is None else decoder.commit(n)
            if frames:
                inbound.take(frames, self._inbox)
            if n < READ_SIZE and decoder.payload_missing < DIRECT_RECV_MIN:
                # A short read drained the socket: skip the EAGAIN syscall, and
                # hand over what was decoded (the peer may be writing more
                # already) unless a big payload is mid-way: read it on.
                return False
            budget -= n
        return False

    # -- closing -------------------------------------------------------------------------
    def close(self) -> None:
        """Close now: stop the watchers, drop what was not sent, close the socket."""
        if not self._closed:
            self._closed_by_us = True
            self._shutdown(None)

    def _shutdown(self, exc: Optional[BaseException]) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_exc = exc
        for watcher in (self._reader, self._writer):
            watcher.stop()
            watcher.close()
        self._sock.close()  # the C close: immediate, not gevent's deferred os.close
        self._out.clear()
        self._small = []
        self._pending = 0
        if self._drained is not None:
            self._drained.set()
            self._drained = None
        if exc is not None and not isinstance(exc, (FrameError, SerializationError)):
            logger.debug("channel fd %d closed by %r", self._fd, exc)
        # Drop the owner's callbacks (usually its bound methods, and it holds this
        # channel): the cycle kept a dead worker's or pool process's objects and
        # this 256 KiB read buffer until a full gc collection, rare in a long-lived
        # master (soak, 150 s: master RSS 30.2 -> 38.4 MiB over 74 kills). A
        # no-op, not None, so a started channel still refuses recv()/start().
        if self._on_message is not None:
            self._on_message = _ignore_message
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            if gevent.getcurrent() is self._hub:
                self._call_on_close(on_close, exc)
            else:
                self._loop.run_callback(self._call_on_close, on_close, exc)

    def _call_on_close(self, on_close: Callable[[Optional[BaseException]], Any],
                       exc: Optional[BaseException]) -> None:
        try:
            on_close(exc)
        except Exception:
            logger.exception("channel fd %d: on_close callback raised", self._fd)


def _ignore_message(_obj: Any) -> None:
    """A closed channel's on_message: the owner's callback is dropped at close."""
