"""Sans-IO line protocol: bytes in, lines and raw (binary) blocks out.

The parser behind :class:`packet_gevent.net.lines.LineConnection`
(EventMachine's ``LineText2``, Twisted's ``LineReceiver``).  It does no I/O
and imports nothing but :mod:`packet_gevent.errors`.

It is pull-based, so a mode switch made while handling one event applies to
the very next byte of the same chunk::

    parser = LineParser(delimiter=b"\\n", max_line_length=16384)
    parser.feed(data)
    while (event := parser.next_event()) is not None:
        kind, payload = event          # LINE, RAW or BLOCK
        if kind is LINE and payload.startswith(b"DATA "):
            parser.set_binary_mode(int(payload[5:]))   # the next N bytes are one BLOCK

* line mode (the start): each ``LINE`` is the bytes before ``delimiter``,
  without it.  With the default delimiter ``b"\\n"`` a trailing ``b"\\r"`` is
  stripped too, so ``\\r\\n`` peers work (as LineText2 does).  A line longer
  than ``max_line_length`` bytes (delimiter excluded) raises
  :class:`~packet_gevent.errors.LineTooLong` as soon as it is certain, without
  buffering more than ``max_line_length + len(delimiter)`` bytes of it; the
  lines before it come out first.  The parser then stays failed: every later
  ``feed`` / ``next_event`` raises LineTooLong again.
* ``set_binary_mode(n)``: the next ``n`` bytes come out as one ``BLOCK``
  (whatever the delimiter), and the parser is back in line mode before that
  event is returned, so the handler of a block may chain another one.
* ``set_binary_mode()`` (no size): every byte from now on comes out as
  ``RAW`` chunks, as they arrive, until ``set_line_mode()``.
* at the end of the stream, ``take_partial_block()`` returns what arrived of a
  sized block cut short (None otherwise); a last line without its delimiter
  is dropped, as in LineText2.
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

from .errors import LineTooLong

__all__ = [
    "LINE", "RAW", "BLOCK",
    "DEFAULT_DELIMITER", "DEFAULT_MAX_LINE_LENGTH", "DEFAULT_MAX_BLOCK_SIZE",
    "LineParser",
]

#: Event kinds returned by :meth:`LineParser.next_event`.
LINE, RAW, BLOCK = "line", "raw", "block"

DEFAULT_DELIMITER = b"\n"
#: EventMachine's LineText2 ``MaxLineLength`` (16 KiB).  A peer that never
#: sends a delimiter cannot make us buffer more than this (plus a delimiter).
DEFAULT_MAX_LINE_LENGTH = 16 * 1024
#: Largest ``set_binary_mode(n)`` block: it is buffered whole before it is
#: handed out.  EventMachine's LineText2 ``MaxBinaryLength`` (32 MiB).
DEFAULT_MAX_BLOCK_SIZE = 32 * 1024 * 1024

BytesLike = Union[bytes, bytearray, memoryview]
Event = Tuple[str, bytes]

_LINES, _SIZED, _RAW = 0, 1, 2


class LineParser:
    """Incremental line / binary-block decoder (see the module docstring)."""

    __slots__ = ("_delimiter", "_strip_cr", "max_line_length", "max_block_size",
                 "_buffer", "_pos", "_scan", "_mode", "_needed", "_failed")

    def __init__(self, delimiter: bytes = DEFAULT_DELIMITER, *,
                 max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
                 max_block_size: int = DEFAULT_MAX_BLOCK_SIZE) -> None:
        if max_line_length < 0:
            raise ValueError(f"max_line_length must be >= 0, got {max_line_length!r}")
        if max_block_size < 0:
            raise ValueError(f"max_block_size must be >= 0, got {max_block_size!r}")
        self.max_line_length = max_line_length
        self.max_block_size = max_block_size
        self._buffer = bytearray()
        #: Start of the unconsumed bytes in _buffer.
        self._pos = 0
        #: Where the next delimiter search starts (never re-scan a long partial line).
        self._scan = 0
        self._mode = _LINES
        self._needed = 0
        self._failed: Optional[LineTooLong] = None
        self._delimiter = b""
        self._strip_cr = False
        self.set_delimiter(delimiter)

    # ------------------------------------------------------------ settings
    @property
    def delimiter(self) -> bytes:
        return self._delimiter

    def set_delimiter(self, delimiter: BytesLike) -> None:
        """Split lines on ``delimiter`` from now on (non-empty bytes)."""
        delimiter = bytes(delimiter) if not isinstance(delimiter, str) else delimiter.encode()
        if not delimiter:
            raise ValueError("the line delimiter must be at least one byte")
        self._delimiter = delimiter
        self._strip_cr = delimiter == b"\n"
        self._scan = self._pos

    @property
    def mode(self) -> str:
        """``"line"``, ``"block"`` (a sized binary mode) or ``"raw"``."""
        return (LINE, BLOCK, RAW)[self._mode]

    def set_binary_mode(self, size: Optional[int] = None) -> None:
        """The next ``size`` bytes are one BLOCK event; without a size, RAW until set_line_mode()."""
        if size is None:
            self._mode = _RAW
            return
        if size.__class__ is not int or size < 0:
            raise ValueError(f"set_binary_mode needs a byte count >= 0 (or None), got {size!r}")
        if size > self.max_block_size:
            raise ValueError(f"a binary block of {size} bytes is over max_block_size="
                             f"{self.max_block_size}: it would be buffered whole; raise the limit "
                             "or use set_binary_mode() without a size to get the bytes as they come")
        self._mode = _SIZED
        self._needed = size

    def set_line_mode(self) -> None:
        """Back to lines (the bytes not handed out yet are parsed as lines)."""
        self._mode = _LINES
        self._scan = self._pos

    # ----------------------------------------------------------- feeding
    @property
    def buffered(self) -> int:
        """Bytes received and not handed out yet."""
        return len(self._buffer) - self._pos

    @property
    def failed(self) -> bool:
        return self._failed is not None

    def feed(self, data: BytesLike) -> None:
        """Add received bytes; take the events with :meth:`next_event`."""
        if self._failed is not None:
            raise LineTooLong(*self._failed.args)
        if self._pos and self._pos == len(self._buffer):
            self._buffer.clear()
            self._pos = self._scan = 0
        self._buffer += data

    def next_event(self) -> Optional[Event]:
        """The next (kind, bytes) event, or None until more bytes are fed."""
        if self._failed is not None:
            raise LineTooLong(*self._failed.args)
        buffer = self._buffer
        pos = self._pos
        end = len(buffer)
        if pos == end and not (self._mode == _SIZED and self._needed == 0):
            return None
        mode = self._mode
        if mode == _LINES:
            delimiter = self._delimiter
            found = buffer.find(delimiter, self._scan)
            if found < 0:
                # The delimiter may start in the last len-1 bytes: search
                # from there next time.
                self._scan = max(pos, end - len(delimiter) + 1)
                # Could a delimiter (and, with b"\n", a "\r" before it) still
                # end a line within the limit?  Else fail now.
                if end - pos - (len(delimiter) - 1) - self._strip_cr > self.max_line_length:
                    self._fail(end - pos, complete=False)
                return None
            line_end = found
            if self._strip_cr and line_end > pos and buffer[line_end - 1] == 13:
                line_end -= 1
            if line_end - pos > self.max_line_length:
                self._fail(line_end - pos, complete=True)
            line = bytes(buffer[pos:line_end])
            self._advance(found + len(delimiter))
            return (LINE, line)
        if mode == _SIZED:
            needed = self._needed
            if end - pos < needed:
                return None
            block = bytes(buffer[pos:pos + needed])
            self._advance(pos + needed)
            self.set_line_mode()
            return (BLOCK, block)
        chunk = bytes(buffer[pos:])
        self._advance(end)
        return (RAW, chunk)

    def take_partial_block(self) -> Optional[bytes]:
        """The bytes of a sized block cut short (the stream ended in it), or None; back to lines.

        What EventMachine's LineText2 hands to ``receive_binary_data`` on
        ``unbind``, so a connection that drops mid-block loses nothing.
        """
        if self._mode != _SIZED or self._failed is not None or self._pos == len(self._buffer):
            return None
        partial = bytes(self._buffer[self._pos:])
        self._advance(len(self._buffer))
        self.set_line_mode()
        return partial

    def events(self, data: BytesLike = b"") -> List[Event]:
        """``feed(data)`` then every event it completes (no mode switches in between)."""
        self.feed(data)
        out = []
        while True:
            event = self.next_event()
            if event is None:
                return out
            out.append(event)

    def _advance(self, to: int) -> None:
        buffer = self._buffer
        if to == len(buffer):
            buffer.clear()
            self._pos = self._scan = 0
        elif to > 65536 and to * 2 > len(buffer):
            del buffer[:to]  # compact: keep the buffer from growing with what was consumed
            self._pos = self._scan = 0
        else:
            self._pos = self._scan = to

    def _fail(self, length: int, *, complete: bool) -> None:
        limit = self.max_line_length
        if complete:
            what = f"a line of {length} bytes is over max_line_length={limit}"
        else:
            what = f"more than {limit} bytes came without the delimiter {self._delimiter!r}"
        self._failed = LineTooLong(f"{what}; the peer is not speaking this line protocol, "
                                   "or the limit (max_line_length) must be raised")
        self._buffer = bytearray()
        self._pos = self._scan = 0
        raise self._failed
