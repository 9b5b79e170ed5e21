"""The channel's message format: objects to frames and back (sans-IO), and the socket both ends own.

A message is one *head* frame of the project's framing
(:mod:`packet_gevent.framing`, a 9-digit length header + payload), followed
by one frame per out-of-band buffer (:mod:`.pickling`):

* head starting with ``0x80`` (every protocol-5 pickle does): the whole
  message, no buffers follow;
* head ``b"O" + kinds + b":" + pickle``: ``len(kinds)`` buffer frames follow,
  one kind letter each: ``b`` a ``bytes`` object of at least
  :data:`~.pickling.OOB_THRESHOLD` bytes (pickled by persistent id), ``r``/``w`` a
  read-only/writable protocol-5 ``PickleBuffer`` (numpy arrays...);
* with custom ``dumps``/``loads`` the head is ``dumps(obj)`` verbatim.

:class:`MessageEncoder` turns an object into the chunks to write (big
buffers as views of the caller's memory, never copied into the pickle);
:class:`MessageDecoder` takes the frames a
:class:`~packet_gevent.framing.FrameDecoder` cut and gives back objects.
A frame the decoder hands out is the ``bytes`` object the receiving end
read into (``recv_into`` the decoder's payload buffer, then
:meth:`~packet_gevent.framing.FrameDecoder.commit`), so a big ``bytes``
arrives without a copy.  Per message (one int): encode 0.9 us, decode
1.1 us (pickle alone 0.2 us).  Both channel ends (:mod:`.channel` in a hub,
:mod:`.blocking` without one) are built on these.
"""
from __future__ import annotations

import io
import os
import pickle
import socket
from typing import Any, Callable, Deque, List, Optional, Tuple, Union

import _socket

from ..errors import FrameError, FrameTooLarge, SerializationError
from ..framing import HEADER_SIZE, MAX_FRAME_LIMIT, FrameDecoder, frame_header
from .pickling import FrameCollector, OOBPickler, OOBUnpickler, holds_big_bytes

__all__ = ["MessageEncoder", "MessageDecoder", "DEFAULT_MAX_MESSAGE_SIZE", "READ_SIZE",
           "DIRECT_RECV_MIN", "IOV_MAX", "CUT_SHORT", "own_socket", "consume"]

#: Largest message (head + buffers) a channel sends or accepts: 256 MiB.
#: Why: the receiver preallocates a frame as soon as it reads its header, so
#: this bounds what one corrupt header can make it commit.  The peer is our
#: own child, so the bound is for bugs, not attacks: 16x the largest
#: benchmarked payload (16 MiB).  Raise it on both ends for bigger messages.
DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024 * 1024

#: Size of the reusable buffer each recv fills.
READ_SIZE = 256 * 1024

#: When at least this much of a frame's payload is missing, receive straight
#: into the decoder's payload buffer instead of the read buffer.
DIRECT_RECV_MIN = 64 * 1024

#: Most chunks one sendmsg takes.
IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)
#: A peer that went away, as the socket reports it: read as EOF.
CUT_SHORT = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
_SMALL_FRAME = 16 * 1024   # frames below this are joined with their neighbours
_PICKLE_START = 0x80

Chunk = Union[bytes, memoryview]


class MessageEncoder:
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
            elif holds_big_bytes(obj):
                collector = FrameCollector()
                file = io.BytesIO()
                OOBPickler(file, collector).dump(obj)
                head = file.getvalue()
            else:
                # The fast path: C pickle.dumps.  Every protocol-5 buffer (numpy
                # arrays, PickleBuffer) goes out of band, even a small one.
                pickle_buffers: List[pickle.PickleBuffer] = []
                head = pickle.dumps(obj, 5, buffer_callback=pickle_buffers.append)
                if pickle_buffers:
                    collector = FrameCollector()
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
        raise FrameTooLarge(
            f"message of {size} bytes ({type(obj).__name__}) is over max_message_size="
            f"{self.max_message_size}; raise max_message_size on both ends or send less")


class MessageDecoder:
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
            lambda data: OOBUnpickler(data, frames, pickle_buffers).load(), head)

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


def own_socket(sock: Any, blocking: bool) -> _socket.socket:
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


def consume(out: Deque[Chunk], n: int) -> None:
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
