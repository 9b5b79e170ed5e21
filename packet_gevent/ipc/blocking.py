"""The channel's blocking end: the same messages over plain blocking syscalls, for a child without a hub.

A pool process runs no gevent hub: it reads a batch, works, and writes its
replies in one ``sendmsg``.  The message format is :mod:`.wire`'s, so this
end talks to a hub :class:`~packet_gevent.ipc.channel.Channel` on the other
side of the socketpair.  A big payload is received with ``MSG_WAITALL``
straight into the ``bytes`` object the decoder hands out.
"""
from __future__ import annotations

import collections
import socket
from itertools import islice
from typing import Any, Callable, Deque, Iterable, List, Optional

import _socket

from ..errors import ChannelClosed, SerializationError
from .wire import (CUT_SHORT, DEFAULT_MAX_MESSAGE_SIZE, DIRECT_RECV_MIN, IOV_MAX, READ_SIZE, Chunk,
                   MessageDecoder, MessageEncoder, consume, own_socket)

__all__ = ["BlockingChannel"]


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
        self._sock: Optional[_socket.socket] = own_socket(sock, blocking=True)
        self._encoder = MessageEncoder(max_message_size, dumps)
        self._inbound = MessageDecoder(max_message_size, loads)
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
            sent = sock.sendmsg(list(islice(out, 0, IOV_MAX))) if len(out) > 1 \
                else sock.send(out[0])
            consume(out, sent)

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
        except CUT_SHORT:
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
