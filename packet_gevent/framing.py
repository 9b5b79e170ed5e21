"""Sans-IO length-prefixed framing: Packet's wire format, encoder and incremental decoder.

A frame is a 9-digit zero-padded ASCII decimal length followed by that many
payload bytes (``b"000000005hello"``).  This module does no I/O and imports
no gevent: bytes go in (:meth:`FrameDecoder.feed`), whole payloads come out.
It is shared by network ``send_object`` and the master<->child pipes.

Decoding strategy (the hot path for every worker message and pool task):

* whole small frames are cut straight out of the chunk that was fed, walking
  an offset; the chunk is never re-sliced or copied as a whole;
* the tail of a chunk that ends inside a frame is kept: a partial header in a
  tiny ``bytearray``; a partial payload straight in the ``bytes`` object that
  will be handed out, allocated at the announced length once the header is
  known (``io.BytesIO(bytes(n))``: ``getbuffer()`` writes into that object,
  ``getvalue()`` returns it uncopied once no view is alive), then filled in
  place.  A frame is copied at most once (into that object), or never when
  the reader receives into it;
* a reader skips that copy by receiving straight into the payload
  buffer: :meth:`FrameDecoder.payload_buffer_remaining` +
  :meth:`FrameDecoder.commit` (``sock.recv_into(view)``, ``view.release()``,
  ``commit(n)``).

Measured with ``python -m benchmarks.framing`` (Python 3.11, shared 2-core
Linux VM, three quiet runs):

* 1,000,000 frames of 10 payload bytes fed in 64 KiB chunks: 0.44-0.45 s,
  i.e. 2.2-2.3 M frames/s (target: 150 k frames/s);
* the first 16 MiB frame of a process, 64 KiB chunks: 2.8-2.9 ms, i.e.
  5.8-6.1 GB/s: one fresh calloc'd buffer, untouched (no page faults) until
  the data lands;
* 16 MiB frames fed in 64 KiB chunks, 8 in a row: 24-26 ms, i.e. 5.2-5.6
  GB/s (with malloc reusing freed blocks, ``bytes(n)`` costs 0.66 ms per
  16 MiB here against 0.23 ms for ``bytearray(n)``); via
  payload_buffer_remaining/commit: 20-21 ms, 6.3-6.8 GB/s.  Through a
  socket, receiving into the object handed out is what counts: see
  :mod:`packet_gevent.ipc.channel`.
"""
from __future__ import annotations

import io
from typing import Callable, Iterable, List, Optional, Union, overload

from .errors import FrameError, FrameTooLarge

__all__ = [
    "HEADER_SIZE",
    "MAX_FRAME_LIMIT",
    "DEFAULT_MAX_FRAME_SIZE",
    "frame_header",
    "encode_frame",
    "encode_frames",
    "FrameDecoder",
    "BinParser",
]

BytesLike = Union[bytes, bytearray, memoryview]

#: Length of the ASCII decimal length header.
HEADER_SIZE = 9

#: Largest payload the 9-digit header can express.
MAX_FRAME_LIMIT = 999_999_999

#: Default largest payload a :class:`FrameDecoder` accepts: 64 MiB.
#: Why: a decoder preallocates the announced length as soon as it has read a
#: header, so this bounds the memory one peer (or one corrupt header that
#: happens to be all digits) can make us commit per connection.  Our largest
#: benchmarked payload is 16 MiB (pool tasks shipping numpy-sized buffers);
#: 64 MiB leaves 4x headroom.  For comparison: gRPC receives 4 MiB by default,
#: the ``websockets`` library 1 MiB, Redis bulk strings 512 MiB; gipc has no
#: limit at all (a weakness).  Raise it per decoder, up to MAX_FRAME_LIMIT.
DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024

# How many bytes of a bad header (and what follows it) an error message shows.
_SHOW_BYTES = 32


def frame_header(length: int, *, max_frame_size: int = MAX_FRAME_LIMIT) -> bytes:
    """Return the 9-byte header for a payload of ``length`` bytes.

    Lets a writer send header and a big payload with ``sendmsg`` without
    concatenating them.  Raises FrameTooLarge if ``length`` is negative or over
    ``max_frame_size`` (at most MAX_FRAME_LIMIT, the most 9 digits can hold).
    """
    if length < 0 or length > max_frame_size or length > MAX_FRAME_LIMIT:
        limit = min(max_frame_size, MAX_FRAME_LIMIT)
        raise FrameTooLarge(
            f"cannot frame a payload of {length} bytes: the limit is {limit} bytes; "
            f"split the data into smaller messages")
    return b"%09d" % length


def _nbytes(payload: BytesLike) -> int:
    if type(payload) is bytes:
        return len(payload)
    return memoryview(payload).nbytes


def encode_frame(payload: BytesLike, *, max_frame_size: int = MAX_FRAME_LIMIT) -> bytes:
    """Return ``payload`` as one frame: 9-digit length header + payload bytes."""
    return frame_header(_nbytes(payload), max_frame_size=max_frame_size) + payload


def encode_frames(payloads: Iterable[BytesLike], *,
                  max_frame_size: int = MAX_FRAME_LIMIT) -> bytes:
    """Return many payloads as consecutive frames in one bytes object (one write)."""
    parts: List[BytesLike] = []
    for payload in payloads:
        parts.append(frame_header(_nbytes(payload), max_frame_size=max_frame_size))
        parts.append(payload)
    return b"".join(parts)


def _show(data: BytesLike) -> str:
    """``!r`` of at most _SHOW_BYTES bytes, marked when truncated."""
    shown = bytes(data[:_SHOW_BYTES])
    return repr(shown) + ("..." if len(data) > _SHOW_BYTES else "")


class FrameDecoder:
    """Incremental decoder: feed it bytes in any chunking, get whole payloads.

    ``feed(data)`` returns the payloads (``bytes``) of every frame completed
    by ``data``, in order; partial frames are kept until later feeds complete
    them.  Zero-length frames are valid and come out as ``b""``.

    A header that is not 9 ASCII digits, or that announces more than
    ``max_frame_size`` bytes, raises :class:`FrameError` (before any of that
    payload is buffered).  The decoder then stays in an error state: every
    later ``feed`` raises FrameError again, since the stream can no longer be
    trusted; close it.  Frames that the failing chunk completed before the
    bad header are dropped too: a decoder never yields a frame from a chunk
    it could not wholly parse.

    Call :meth:`eof` when the stream ends: it raises FrameError if the stream
    was cut inside a frame.
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if not 0 <= max_frame_size <= MAX_FRAME_LIMIT:
            raise ValueError(
                f"max_frame_size must be between 0 and {MAX_FRAME_LIMIT} "
                f"(the 9-digit header limit), got {max_frame_size!r}")
        self.max_frame_size = max_frame_size
        self._head = bytearray()                  # partial header (< 9 bytes)
        self._payload: Optional[io.BytesIO] = None  # owns the partial payload's bytes
        self._view: Optional[memoryview] = None     # writable view of those bytes
        self._filled = 0                           # bytes of _payload received
        self._error: Optional[str] = None

    # -- introspection -------------------------------------------------------
    @property
    def buffered(self) -> int:
        """Bytes of the unfinished frame held: partial header or payload received so far."""
        return len(self._head) + self._filled

    @property
    def in_frame(self) -> bool:
        """True when the bytes fed so far end inside a frame."""
        return bool(self._head) or self._payload is not None

    @property
    def payload_missing(self) -> int:
        """Bytes the current frame's payload still lacks (0 when not inside a payload)."""
        if self._view is None:
            return 0
        return len(self._view) - self._filled

    @property
    def failed(self) -> bool:
        """True once the decoder has raised FrameError; it will never decode again."""
        return self._error is not None

    # -- decoding ------------------------------------------------------------
    def feed(self, data: BytesLike) -> List[bytes]:
        """Consume ``data``; return the payload of each frame it completed."""
        if self._error is not None:
            raise FrameError(
                f"this decoder already failed ({self._error}); the stream is out of "
                f"sync: close it and use a new decoder for a new stream")
        if type(data) is not bytes:
            data = memoryview(data).cast("B")
        frames: List[bytes] = []
        pos = 0
        end = len(data)
        if self._head:
            pos = self._continue_header(data, frames)
        if self._payload is not None and pos < end:
            pos = self._fill_payload(data, pos, frames)
        max_size = self.max_frame_size
        while end - pos >= HEADER_SIZE:
            header = bytes(data[pos:pos + HEADER_SIZE])
            if not header.isdigit():
                self._fail_header(header, data[pos:pos + _SHOW_BYTES + 1])
            length = int(header)
            if length > max_size:
                self._fail_size(length)
            start = pos + HEADER_SIZE
            pos = start + length
            if pos > end:
                self._start_payload(length)
                self._fill_payload(data, start, frames)
                return frames
            frames.append(bytes(data[start:pos]))
        if pos < end:
            self._head += data[pos:]
        return frames

    def _continue_header(self, data: BytesLike, frames: List[bytes]) -> int:
        """Complete a partial header from the start of ``data``; return bytes used."""
        used = min(HEADER_SIZE - len(self._head), len(data))
        self._head += data[:used]
        if len(self._head) < HEADER_SIZE:
            return used
        header = bytes(self._head)
        self._head.clear()
        if not header.isdigit():
            self._fail_header(header, header + bytes(data[used:used + _SHOW_BYTES]))
        length = int(header)
        if length > self.max_frame_size:
            self._fail_size(length)
        if length == 0:
            frames.append(b"")
        else:
            self._start_payload(length)
        return used

    def _start_payload(self, length: int) -> None:
        # The payload is received straight into the ``bytes`` object that will
        # be handed out: ``BytesIO(bytes(n))`` adopts that (sole-owned) bytes
        # object as its buffer, ``getbuffer()`` is a writable view of it, and
        # once every view is released ``getvalue()`` returns that very object
        # (CPython; anywhere else, or while a caller still holds a view, it
        # returns a copy: correct, one copy slower).  ``bytes(n)`` is calloc'd,
        # so no page is touched before the data lands in it.  Nothing can
        # write into the object after it is handed out: the only writable
        # path is a view of the BytesIO, getvalue() shares only when no view
        # is alive, and the BytesIO is dropped right after.
        self._payload = io.BytesIO(bytes(length))
        self._view = self._payload.getbuffer()
        self._filled = 0

    def _fill_payload(self, data: BytesLike, pos: int, frames: List[bytes]) -> int:
        """Copy ``data[pos:]`` into the partial payload; return the new position."""
        assert self._view is not None
        take = min(len(self._view) - self._filled, len(data) - pos)
        self._view[self._filled:self._filled + take] = memoryview(data)[pos:pos + take]
        self._filled += take
        self._finish_payload(frames)
        return pos + take

    def _finish_payload(self, frames: List[bytes]) -> None:
        assert self._view is not None and self._payload is not None
        if self._filled == len(self._view):
            self._view.release()
            frames.append(self._payload.getvalue())
            self._payload = self._view = None
            self._filled = 0

    # -- receiving straight into the payload buffer ---------------------------
    def payload_buffer_remaining(self) -> Optional[memoryview]:
        """Writable view of the unfilled part of the current payload, or None.

        Not None only between a header and the end of its payload (after a
        ``feed`` that ended inside a payload).  A reader may then
        ``n = sock.recv_into(view)``, ``view.release()`` and call
        :meth:`commit(n) <commit>`: the kernel writes straight into the
        ``bytes`` object that ``commit`` hands out, no copy at all.  A view
        still alive when the frame completes costs one copy of the payload
        (the decoder must then hand out a copy: the view could still write).
        """
        if self._error is not None or self._view is None:
            return None
        return self._view[self._filled:]

    def commit(self, nbytes: int) -> List[bytes]:
        """Record ``nbytes`` written into :meth:`payload_buffer_remaining`.

        Returns ``[payload]`` when that completed the frame, else ``[]``.
        """
        if self._view is None or self._error is not None:
            raise ValueError("commit() without a payload in progress; "
                             "use payload_buffer_remaining() first and check it is not None")
        remaining = len(self._view) - self._filled
        if not 0 <= nbytes <= remaining:
            raise ValueError(f"commit({nbytes}) outside 0..{remaining}, the bytes the "
                             f"payload buffer had left")
        self._filled += nbytes
        frames: List[bytes] = []
        self._finish_payload(frames)
        return frames

    # -- end of stream ---------------------------------------------------------
    def eof(self) -> None:
        """Declare the end of the stream; raise FrameError if it cut a frame short.

        A clean end of stream between frames is a normal close.
        """
        if self._head:
            got = len(self._head)
            self._error = f"stream ended inside a frame header after {got} of {HEADER_SIZE} bytes"
            raise FrameError(
                f"the frame was cut short: the stream ended after {got} of "
                f"{HEADER_SIZE} header bytes ({_show(self._head)}); the peer closed "
                f"or crashed mid-message")
        if self._payload is not None:
            assert self._view is not None
            got, want = self._filled, len(self._view)
            self._error = f"stream ended inside a payload after {got} of {want} bytes"
            raise FrameError(
                f"the frame was cut short: the stream ended after {got} of {want} "
                f"payload bytes; the peer closed or crashed mid-message")

    # -- errors ------------------------------------------------------------------
    def _fail_header(self, header: bytes, context: BytesLike) -> None:
        self._error = f"bad frame header {header!r}"
        raise FrameError(
            f"bad frame header {header!r} (stream at that point: {_show(context)}): "
            f"expected {HEADER_SIZE} ASCII digits giving the payload length. The stream "
            f"is out of sync or the peer does not speak this framing; close the connection")

    def _fail_size(self, length: int) -> None:
        self._error = f"frame of {length} bytes over max_frame_size={self.max_frame_size}"
        raise FrameError(
            f"frame header announces {length} bytes, over max_frame_size="
            f"{self.max_frame_size}; if the peer legitimately sends messages this big, "
            f"raise max_frame_size (up to {MAX_FRAME_LIMIT}), else close the connection")


class BinParser(FrameDecoder):
    """Packet's name for the frame decoder, with its ``extract`` call.

    Packet's ``BinParser#extract(chunk) { |frame| }`` silently rejects a header
    that is not all digits.  Here a corrupt header raises FrameError instead,
    deliberately: skipping it would leave the parser reading payload bytes as
    headers, i.e. desynchronised from the stream for good.
    """

    @overload
    def extract(self, data: BytesLike, callback: None = None) -> List[bytes]: ...

    @overload
    def extract(self, data: BytesLike, callback: Callable[[bytes], object]) -> None: ...

    def extract(self, data: BytesLike,
                callback: Optional[Callable[[bytes], object]] = None) -> Optional[List[bytes]]:
        """Feed ``data``; call ``callback(frame)`` per whole frame, or return them.

        If the callback raises, the exception propagates and the remaining
        frames of this chunk are dropped (the connection should be closed).
        """
        frames = self.feed(data)
        if callback is None:
            return frames
        for frame in frames:
            callback(frame)
        return None
