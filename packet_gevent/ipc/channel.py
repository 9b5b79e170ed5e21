"""Framed object messages between the master and a child over their socketpair.

These channels are private to our own process tree: they run on the AF_UNIX
socketpair that :func:`~packet_gevent.process.spawn_child` creates and they
unpickle what they receive, so they must never be used on a network socket
(the constructor refuses anything but AF_UNIX).

Wire format: the project's frames (:mod:`packet_gevent.framing`, a 9-digit
length header + payload).  A message is one *head* frame, followed by one
frame per out-of-band buffer:

* head starting with ``0x80`` (every protocol-5 pickle does): the whole
  message, no buffers follow;
* head ``b"O" + kinds + b":" + pickle``: ``len(kinds)`` buffer frames follow,
  one kind letter each: ``b`` a ``bytes`` object of at least
  :data:`OOB_THRESHOLD` bytes (pickled by persistent id), ``r``/``w`` a
  read-only/writable protocol-5 ``PickleBuffer`` (numpy arrays...);
* with custom ``dumps``/``loads`` the head is ``dumps(obj)`` verbatim.

Big buffers are never copied into the pickle: their memory goes to the kernel
straight from the caller's object (``sendmsg``), and on the receiving side
``recv_into`` writes straight into the ``bytes`` object the decoder hands out
(:meth:`FrameDecoder.commit <packet_gevent.framing.FrameDecoder.commit>`; the
view is released first, else that object would be copied once more).  Writable
buffers are copied once at ``send()`` (the caller may change them before the
kernel takes them); ``bytes`` are immutable and never copied on send.

Two ends: :class:`Channel` lives in a gevent hub (the master, or a worker
running its own reactor): ``send`` never blocks, frames queued during one loop
turn leave in one ``sendmsg``, receiving is callbacks from a persistent read
watcher (``start``) or a cooperative ``recv``.  :class:`BlockingChannel` is for
pool children that need no hub at all: plain blocking syscalls, batches.

Measured with ``python -m packet_gevent.ipc.channel`` (:func:`_measure`; Python
3.11, shared 2-core VM, master Channel in its hub, child BlockingChannel
echoing; three runs):

* round trip of one int, p50: 24-28 us when the scheduler keeps both
  processes close, 62-84 us when each wake-up crosses CPUs (the VM's IPI
  cost: a bare gevent-socket echo measures 17 us pinned, 50-59 us unpinned;
  a blocking socketpair echo 14-42 us);
* tiny messages echoed in batches of 500: 135k-203k msg/s (each message is
  encoded and decoded twice: master and child);
* 16 MiB ``bytes`` each way, 12 round trips in a row per process, three
  processes: 1,030-1,460 MiB/s for the first four, 2,500-3,000 after
  (malloc then reuses freed blocks: no page faults).  Before (received into
  a ``bytearray``, then copied out as ``bytes``): 600-680 for the first two,
  ~1,100 the third, 2,400-3,500 after.  The slow start is the kernel's
  first-touch page faults (~2 us per 4 KiB page: 13 ms more per round trip
  of 8,192 fresh pages) of fresh receive memory, in the child and the master:
  one 16 MiB object per direction now, two before.  ``_measure`` (median of
  8): 1,550-1,690 MiB/s, first 1,360-1,510, best 4,250-4,760 (before:
  median 2,250-2,580, first 225-670, best ~2,600: its median falls on the
  fourth to fifth transfer, where the warm-up ends);
* through ForkPool (``python -m benchmarks.pool --peers ours --repeat 3``,
  median of 5 round trips from a fresh pool, median of 3 runs; old and new
  run alternately on the loaded machine): 1,392 and 1,652 MiB/s each way,
  1,739 when quieter; before 833 and 905;
* 16 MiB ``bytearray`` each way: 1,190-1,420 MiB/s (before 530-700):
  pickled in band (a copy into the pickle, one out of it); the 16 MiB head
  frame is no longer copied out of the decoder;
* per message: encode 0.9 us, decode 1.1 us (one int; pickle alone 0.2 us).
"""
from __future__ import annotations

import collections
import io
import logging
import os
import pickle
import socket
from itertools import islice
from typing import Any, Callable, Deque, Iterable, List, Optional, Tuple, Union

import _socket
import gevent
import gevent.event
from gevent.timeout import Timeout

from ..errors import ChannelClosed, FrameError, SerializationError
from ..framing import HEADER_SIZE, MAX_FRAME_LIMIT, FrameDecoder, frame_header

__all__ = ["Channel", "BlockingChannel", "DEFAULT_MAX_MESSAGE_SIZE", "OOB_THRESHOLD"]

logger = logging.getLogger(__name__)

#: Largest message (head + buffers) a channel sends or accepts: 256 MiB.
#: Why: the receiver preallocates a frame as soon as it reads its header, so
#: this bounds what one corrupt header can make it commit.  The peer is our
#: own child, so the bound is for bugs, not attacks: 16x the largest
#: benchmarked payload (16 MiB).  Raise it on both ends for bigger messages.
DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024 * 1024

#: ``bytes`` objects at least this big travel out of band (protocol-5 pickle
#: buffers always do: they are rare and mostly big, numpy arrays).
#: Below it, the copy into and out of the pickle costs less than an extra
#: frame and allocation (64 KiB copies in ~10 us here).
OOB_THRESHOLD = 64 * 1024

#: Size of the reusable buffer each recv fills.
READ_SIZE = 256 * 1024

#: When at least this much of a frame's payload is missing, receive straight
#: into the decoder's payload buffer instead of the read buffer.
DIRECT_RECV_MIN = 64 * 1024

#: Bytes one readable event may consume before the hub serves others.
READ_BUDGET = 4 * 1024 * 1024

_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)
_SMALL_FRAME = 16 * 1024   # frames below this are joined with their neighbours
_PICKLE_START = 0x80
_READ, _WRITE = 1, 2
_CUT_SHORT = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)

Chunk = Union[bytes, memoryview]


# -- encoding ----------------------------------------------------------------------

class _OOBPickler(pickle.Pickler):
    """Protocol-5 pickler that takes big ``bytes`` out of band, at any depth.

    ``bytes`` never reach ``reducer_override`` or ``buffer_callback``;
    ``persistent_id`` is the one hook the C pickler calls for them, once per
    object (~0.1 us each), so it is used only for messages known to hold one.
    """

    def __init__(self, file: io.BytesIO, collector: "_Collector") -> None:
        super().__init__(file, 5, buffer_callback=collector.buffer)
        self.collector = collector

    def persistent_id(self, obj: Any) -> Optional[int]:
        if type(obj) is bytes and len(obj) >= OOB_THRESHOLD:
            return self.collector.add(b"b", memoryview(obj))
        return None


class _Collector:
    """The out-of-band buffers of one message, in order, with their kinds."""

    __slots__ = ("kinds", "buffers")

    def __init__(self) -> None:
        self.kinds = bytearray()
        self.buffers: List[Chunk] = []

    def add(self, kind: bytes, buf: Chunk) -> int:
        self.kinds += kind
        self.buffers.append(buf)
        return len(self.buffers) - 1

    def buffer(self, buf: pickle.PickleBuffer) -> bool:
        """buffer_callback: every protocol-5 buffer goes out of band (returns False)."""
        raw = buf.raw()
        if raw.readonly:
            self.add(b"r", raw)
        else:
            self.add(b"w", raw.tobytes())  # snapshot: the caller may mutate it
        return False


def _holds_big_bytes(obj: Any, _bytes=bytes, _tuple=tuple, _list=list, _dict=dict) -> bool:
    """Whether ``obj`` has a big ``bytes`` where messages carry payloads.

    Looks at ``obj`` itself, the items of a top-level tuple/list/dict values
    and the items of those that are tuples/lists/dicts; 8 items per
    container.  0.1-0.5 us for a small message.  A big ``bytes`` deeper down
    is pickled in band: correct, one copy more each way.
    """
    kind = type(obj)
    if kind is _bytes:
        return len(obj) >= OOB_THRESHOLD
    if kind is _tuple or kind is _list:
        items = obj if len(obj) <= 8 else obj[:8]
    elif kind is _dict and len(obj) <= 8:
        items = obj.values()
    else:
        return False
    for item in items:
        kind = type(item)
        if kind is _bytes:
            if len(item) >= OOB_THRESHOLD:
                return True
        elif kind is _tuple or kind is _list:
            for sub in (item if len(item) <= 8 else item[:8]):
                if type(sub) is _bytes and len(sub) >= OOB_THRESHOLD:
                    return True
        elif kind is _dict and len(item) <= 8:
            for sub in item.values():
                if type(sub) is _bytes and len(sub) >= OOB_THRESHOLD:
                    return True
    return False


class _Encoder:
    """Turns objects into frames: pickle protocol 5, or the caller's ``dumps``."""

    def __init__(self, max_message_size: int, dumps: Optional[Callable[[Any], bytes]]) -> None:
        self.max_message_size = max_message_size
        self._dumps = dumps

    def encode(self, obj: Any) -> Tuple[List[Chunk], int]:
        """Return (chunks, total bytes) for one message; raise SerializationError."""
        collector = None
        try:
            if self._dumps is not None:
                head = self._dumps(obj)
            elif _holds_big_bytes(obj):
                collector = _Collector()
                file = io.BytesIO()
                _OOBPickler(file, collector).dump(obj)
                head = file.getvalue()
            else:
                # The fast path: C pickle.dumps.  Every protocol-5 buffer (numpy
                # arrays, PickleBuffer) goes out of band, even a small one.
                pickle_buffers: List[pickle.PickleBuffer] = []
                head = pickle.dumps(obj, 5, buffer_callback=pickle_buffers.append)
                if pickle_buffers:
                    collector = _Collector()
                    for buf in pickle_buffers:
                        collector.buffer(buf)
        except Exception as exc:
            raise SerializationError(
                f"cannot pickle {type(obj).__name__} object for the other process: "
                f"{type(exc).__name__}: {exc}. Use a top-level (importable) function, "
                f"pass picklable arguments, or install cloudpickle and pass "
                f"dumps=cloudpickle.dumps") from exc
        size = len(head) + HEADER_SIZE
        if collector is None or not collector.buffers:
            if size > self.max_message_size:
                self._too_big(obj, size)
            if size < _SMALL_FRAME:
                return [frame_header(len(head)) + head], size
            return [frame_header(len(head)), head], size
        head = b"O" + collector.kinds + b":" + head
        chunks: List[Chunk] = [frame_header(len(head)) + head]
        size = len(chunks[0])
        for buf in collector.buffers:
            chunks += (frame_header(len(buf)), buf)  # len == nbytes: 'B' views or bytes
            size += HEADER_SIZE + len(buf)
        if size > self.max_message_size:
            self._too_big(obj, size)
        return chunks, size

    def _too_big(self, obj: Any, size: int) -> None:
        raise FrameError(
            f"message of {size} bytes ({type(obj).__name__}) is over max_message_size="
            f"{self.max_message_size}; raise max_message_size on both ends or send less")


# -- decoding ----------------------------------------------------------------------

class _Unpickler(pickle.Unpickler):
    def __init__(self, data: memoryview, buffers: list, persistent: list) -> None:
        super().__init__(io.BytesIO(data), buffers=buffers)
        self._persistent = persistent

    def persistent_load(self, pid: Any) -> Any:
        return self._persistent[pid]


class _Inbound:
    """Frames in, objects out: groups a head with its buffer frames and unpickles."""

    def __init__(self, max_message_size: int, loads: Optional[Callable[[bytes], Any]]) -> None:
        self.decoder = FrameDecoder(min(max_message_size, MAX_FRAME_LIMIT))
        self.max_message_size = max_message_size
        self._loads = loads
        self._kinds = b""       # kinds of the buffers the current message awaits
        self._head: Optional[memoryview] = None
        self._buffers: List[bytes] = []
        self._size = 0

    @property
    def in_message(self) -> bool:
        return self._head is not None or self.decoder.in_frame

    def take(self, frames: List[bytes], out: Deque[Any]) -> None:
        loads = self._loads
        for frame in frames:
            if self._head is None:
                if loads is None and frame and frame[0] == _PICKLE_START:
                    try:  # the common case, inlined
                        out.append(pickle.loads(frame))
                        continue
                    except Exception as exc:
                        raise _unpickling_error(exc) from exc
                self._start(frame, out)
            else:
                self._buffers.append(frame)
                self._size += len(frame)
                if self._size > self.max_message_size:
                    raise FrameError(f"message over max_message_size={self.max_message_size} "
                                     f"({self._size} bytes so far); raise it on both ends")
                if len(self._buffers) == len(self._kinds):
                    out.append(self._finish())

    def eof(self) -> None:
        """Raise FrameError if the stream ended inside a message."""
        self.decoder.eof()
        if self._head is not None:
            raise FrameError(
                f"the message was cut short: the stream ended after {len(self._buffers)} of "
                f"its {len(self._kinds)} buffers; the peer closed or crashed mid-message")

    def _start(self, frame: bytes, out: Deque[Any]) -> None:
        if self._loads is not None:
            out.append(self._unpickle(self._loads, frame))
        elif frame[:1] == b"O":
            colon = frame.find(b":", 1)
            if colon < 2:
                raise FrameError(f"bad message head {frame[:32]!r}: no buffer kinds")
            self._kinds = frame[1:colon]
            self._head = memoryview(frame)[colon + 1:]
            self._buffers = []
            self._size = len(frame)
        elif frame and frame[0] == _PICKLE_START:
            out.append(self._unpickle(pickle.loads, frame))
        else:
            raise FrameError(f"bad message head {frame[:32]!r}: not a pickle; the peer "
                             f"does not speak this channel's protocol")

    def _finish(self) -> Any:
        head, kinds, frames = self._head, self._kinds, self._buffers
        self._head, self._kinds, self._buffers, self._size = None, b"", [], 0
        pickle_buffers = [frame if kind == 0x72 else bytearray(frame)   # r / w
                          for kind, frame in zip(kinds, frames) if kind != 0x62]
        return self._unpickle(
            lambda data: _Unpickler(data, pickle_buffers, frames).load(), head)

    @staticmethod
    def _unpickle(loads: Callable[[Any], Any], data: Any) -> Any:
        try:
            return loads(data)
        except Exception as exc:
            raise _unpickling_error(exc) from exc


def _unpickling_error(exc: Exception) -> SerializationError:
    return SerializationError(
        f"cannot unpickle a message from the other process: {type(exc).__name__}: "
        f"{exc}. Its classes and functions must be importable here too")


def _own_socket(sock: Any, blocking: bool) -> _socket.socket:
    """Take over ``sock`` (it is detached) as a raw, unpatched socket."""
    if getattr(sock, "family", None) != socket.AF_UNIX:
        raise ValueError(
            f"a channel unpickles what it receives, so it only runs on the AF_UNIX "
            f"socketpair between our own processes; got {sock!r}")
    raw = _socket.socket(fileno=sock.detach())
    raw.setblocking(blocking)
    # SO_SNDBUF of 1 or 4 MiB instead of the default 208 KiB changed 16 MiB
    # transfers by less than the run-to-run noise here: left alone.
    return raw


def _consume(out: Deque[Chunk], n: int) -> None:
    """Drop the first ``n`` bytes of the chunk queue."""
    while n:
        first = out[0]
        size = len(first)
        if n >= size:
            out.popleft()
            n -= size
        else:
            out[0] = memoryview(first)[n:]
            return


# -- the hub end ---------------------------------------------------------------------

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
        self._sock = _own_socket(sock, blocking=False)
        self._fd = self._sock.fileno()
        self._encoder = _Encoder(max_message_size, dumps)
        self._inbound = _Inbound(max_message_size, loads)
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
    def send(self, obj: Any) -> None:
        """Queue ``obj``; raises SerializationError (channel unharmed) or ChannelClosed."""
        self._check_can_send()
        chunks, size = self._encoder.encode(obj)
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
            why = self._write_exc or self._close_exc
            raise ChannelClosed(
                "cannot send: the channel is closed" + (f" ({why})" if why else "")) from why

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
                    sent = sock.sendmsg(list(islice(out, 0, _IOV_MAX)))
                self._pending -= sent
                _consume(out, sent)
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
        if self._on_message is not None or self._receiving:
            raise RuntimeError("this channel is already receiving")
        if self._closed:
            raise ChannelClosed("cannot start: the channel is closed") from self._close_exc
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
            raise RuntimeError("recv() cannot be used on a channel started with callbacks")
        if self._receiving:
            raise RuntimeError("another greenlet is already receiving on this channel")
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
            except _CUT_SHORT:
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


# -- the blocking end (pool children) -------------------------------------------------

class BlockingChannel:
    """The same messages over plain blocking syscalls, for a child without a hub.

    A pool child's loop: ``batch = ch.recv_batch()`` (every message one read
    brought, at least one), work, ``ch.send_many(replies)`` (one sendmsg).
    """

    def __init__(self, sock: Any, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 dumps: Optional[Callable[[Any], bytes]] = None,
                 loads: Optional[Callable[[bytes], Any]] = None) -> None:
        if (dumps is None) != (loads is None):
            raise ValueError("pass both dumps and loads, or neither (pickle protocol 5)")
        self._sock: Optional[_socket.socket] = _own_socket(sock, blocking=True)
        self._encoder = _Encoder(max_message_size, dumps)
        self._inbound = _Inbound(max_message_size, loads)
        self._rbuf = bytearray(READ_SIZE)
        self._rview = memoryview(self._rbuf)
        self._inbox: Deque[Any] = collections.deque()
        self._eof = False

    @property
    def closed(self) -> bool:
        return self._sock is None

    def fileno(self) -> int:
        return -1 if self._sock is None else self._sock.fileno()

    def send(self, obj: Any) -> None:
        """Send one message now (blocks until the kernel took it)."""
        self.send_many((obj,))

    def send_many(self, objs: Iterable[Any]) -> None:
        """Send several messages in one sendmsg; all or none are sent."""
        sock = self._require_open()
        chunks: List[Chunk] = []
        small: List[bytes] = []
        for index, obj in enumerate(objs):
            try:
                encoded, _ = self._encoder.encode(obj)
            except SerializationError as exc:
                raise SerializationError(f"message {index} of the batch: {exc}") from exc.__cause__
            if len(encoded) == 1:
                small.append(encoded[0])  # type: ignore[arg-type]
            else:
                if small:
                    chunks.append(b"".join(small))
                    small = []
                chunks += encoded
        if small:
            chunks.append(b"".join(small))
        out = collections.deque(chunks)
        while out:
            sent = sock.sendmsg(list(islice(out, 0, _IOV_MAX))) if len(out) > 1 \
                else sock.send(out[0])
            _consume(out, sent)

    def recv(self) -> Any:
        """Return the next message; EOFError at a clean EOF, FrameError if cut short."""
        while not self._inbox:
            self._read()
        return self._inbox.popleft()

    def recv_batch(self) -> List[Any]:
        """Return every message available after at most one blocking read (>= 1)."""
        if not self._inbox:
            self._read()
            while not self._inbox:
                self._read()
        batch = list(self._inbox)
        self._inbox.clear()
        return batch

    def _read(self) -> None:
        sock = self._require_open()
        if self._eof:
            raise EOFError("the other process closed the channel")
        decoder = self._inbound.decoder
        view = (decoder.payload_buffer_remaining()
                if decoder.payload_missing >= DIRECT_RECV_MIN else None)
        try:
            if view is None:
                n = sock.recv_into(self._rbuf)
            else:  # the whole rest of a big payload, into the bytes handed out
                n = sock.recv_into(view, 0, socket.MSG_WAITALL)
        except _CUT_SHORT:
            n = 0
        finally:
            if view is not None:
                view.release()  # before commit(): hands the payload out uncopied
        if not n:
            self._eof = True
            self._inbound.eof()
            raise EOFError("the other process closed the channel")
        frames = decoder.feed(self._rview[:n]) if view is None else decoder.commit(n)
        if frames:
            self._inbound.take(frames, self._inbox)

    def _require_open(self) -> _socket.socket:
        if self._sock is None:
            raise ChannelClosed("the channel was closed")
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# -- measurements ------------------------------------------------------------------------

def _echo_child(sock: socket.socket) -> int:
    channel = BlockingChannel(sock)
    while True:
        try:
            batch = channel.recv_batch()
        except EOFError:
            return 0
        channel.send_many(batch)


def _measure() -> None:  # pragma: no cover - run by hand to refresh the numbers
    """Print latency and throughput: python -m packet_gevent.channel."""
    import time
    from .process import spawn_child

    child = spawn_child(_echo_child, name="echo")
    channel = Channel(child.sock)
    for _ in range(2000):  # warm up
        channel.send(1)
        channel.recv()
    samples = []
    for i in range(20000):
        t0 = time.perf_counter()
        channel.send(i)
        channel.recv()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    print(f"round trip (int), p50 {samples[len(samples) // 2] * 1e6:.1f} us, "
          f"p99 {samples[len(samples) * 99 // 100] * 1e6:.1f} us")
    n, batch = 200_000, 500
    msg = ("task", 12345, (1, 2.5, "abc"))
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        channel.send_many([msg] * batch)
        for _ in range(batch):
            channel.recv()
    took = time.perf_counter() - t0
    print(f"tiny messages echoed in batches of {batch}: {n / took:,.0f} msg/s")
    for blob in (bytes(16 << 20), bytearray(16 << 20)):
        times = []
        for _ in range(8):
            t0 = time.perf_counter()
            channel.send(blob)
            back = channel.recv()
            times.append(time.perf_counter() - t0)
            assert len(back) == len(blob) and type(back) is type(blob)
        first, times = times[0], sorted(times)
        print(f"16 MiB {type(blob).__name__} each way: first {32 / first:,.0f} MiB/s, "
              f"median {32 / times[4]:,.0f} MiB/s, best {32 / times[0]:,.0f} MiB/s")
    t0 = time.perf_counter()
    for _ in range(20):
        other = spawn_child(_echo_child)
        other_channel = Channel(other.sock)
        other_channel.send(1)
        other_channel.recv()
        other_channel.close()
        other.wait()
    print(f"spawn + first round trip + exit: {(time.perf_counter() - t0) / 20 * 1e3:.1f} ms")
    channel.close()
    child.wait(5)


if __name__ == "__main__":  # pragma: no cover
    _measure()
