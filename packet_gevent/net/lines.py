"""LineConnection: a Connection that speaks lines (EventMachine's LineText2, Twisted's LineReceiver).

Subclass it and override ``receive_line(line)``; the parsing is the sans-IO
:class:`packet_gevent.lines.LineParser`.  Class attributes set the protocol:
``delimiter`` (``b"\\n"``; a ``\\r`` before it is stripped too),
``max_line_length`` (16 KiB) and ``max_block_size`` (32 MiB, the largest
``set_binary_mode(n)`` block)::

    class Smtpish(LineConnection):
        def receive_line(self, line):
            if line.startswith(b"DATA "):
                self.set_binary_mode(int(line[5:]))   # next N bytes: receive_binary_data
            else:
                self.send_data(b"ok\\r\\n")

        def receive_binary_data(self, data):
            ...                                         # then back to lines

A connection that ends in the middle of a ``set_binary_mode(n)`` block gets
what arrived of it in ``receive_binary_data`` (shorter than ``n``, with no
``receive_end_of_binary_data``), then ``unbind``, as in EventMachine.

A line over ``max_line_length`` calls ``line_too_long(error)``, whose default
logs it and closes this connection once its queued output is written, with
``unbind(LineTooLong)``; other connections are untouched.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

from ..errors import LineTooLong
from ..lines import (BLOCK, DEFAULT_DELIMITER, DEFAULT_MAX_BLOCK_SIZE, DEFAULT_MAX_LINE_LENGTH, LINE,
                     LineParser)
from .connection import Connection
from .transport import CALLBACK_ERRORS, OPEN, Transport

__all__ = ["LineConnection", "LineText2"]

logger = logging.getLogger(__name__)


class LineConnection(Connection):
    """A Connection whose bytes arrive as ``receive_line(line)`` (and binary blocks)."""

    #: Line delimiter (bytes).  With ``b"\n"`` a ``b"\r"`` before it is stripped as well.
    delimiter: bytes = DEFAULT_DELIMITER
    #: Longest line accepted from the peer (bytes, delimiter excluded).
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    #: Largest block ``set_binary_mode(n)`` may ask for (it is buffered whole).
    max_block_size: int = DEFAULT_MAX_BLOCK_SIZE

    # ----------------------------------------------------------- callbacks
    def receive_line(self, line: bytes) -> None:
        """One line from the peer, without its delimiter."""

    def receive_binary_data(self, data: bytes) -> None:
        """Bytes received in binary mode: one whole block after ``set_binary_mode(n)``,
        or each chunk as it comes after ``set_binary_mode()``."""

    def receive_end_of_binary_data(self) -> None:
        """A ``set_binary_mode(n)`` block was delivered; the connection is back in line mode.

        Not called for a block cut short by the end of the connection: that
        part arrives in ``receive_binary_data``, shorter than asked, just
        before ``unbind`` (as in EventMachine's LineText2)."""

    def line_too_long(self, error: LineTooLong) -> None:
        """The peer sent a line over ``max_line_length``.

        Default: log it, stop reading lines, close after the queued output is
        written; ``unbind`` gets ``error``.  Override to answer first (then
        call ``close_connection_after_writing()`` yourself).
        """
        logger.warning("closing %r: %s", self, error)
        self._transport.close_when_flushed(error)

    # ------------------------------------------------------------- set-up
    def _pg_setup(self, reactor: Any, on_instance: Any = None, **options: Any) -> Transport:
        transport = super()._pg_setup(reactor, on_instance, **options)
        self._line_parser = LineParser(self.delimiter, max_line_length=self.max_line_length,
                                       max_block_size=self.max_block_size)
        return transport

    def receive_data(self, data: bytes) -> None:
        parser = self._line_parser
        if parser.failed:
            return  # closing after an over-long line: what follows it is not ours to read
        transport = self._transport
        try:
            parser.feed(data)
            event = parser.next_event()
        except LineTooLong as exc:
            self.line_too_long(exc)
            return
        while event is not None:
            kind, payload = event
            if kind is LINE:
                self.receive_line(payload)
            else:
                self.receive_binary_data(payload)
                if kind is BLOCK:
                    self.receive_end_of_binary_data()
            if transport.state is not OPEN or transport.close_after_writing:
                return
            try:
                event = parser.next_event()
            except LineTooLong as exc:
                self.line_too_long(exc)
                return

    def _call_unbind(self, reason: Optional[BaseException]) -> None:
        parser = getattr(self, "_line_parser", None)  # None: set-up failed before it existed
        partial = parser.take_partial_block() if parser is not None else None
        if partial is not None:  # the connection ended mid-block: hand over what came
            try:
                self.receive_binary_data(partial)
            except CALLBACK_ERRORS as exc:  # reported like any callback's; unbind still runs
                self._transport._callback_failed(self.receive_binary_data, exc)
        super()._call_unbind(reason)

    # ------------------------------------------------------------ methods
    def set_delimiter(self, delimiter: bytes) -> None:
        """Split the following lines on ``delimiter``."""
        self._line_parser.set_delimiter(delimiter)

    def set_binary_mode(self, size: Optional[int] = None) -> None:
        """The next ``size`` bytes go to ``receive_binary_data`` as one block, then back to
        lines; without a size, every byte goes there as it comes, until ``set_line_mode()``."""
        self._line_parser.set_binary_mode(size)

    #: EventMachine LineText2's name.
    set_text_mode = set_binary_mode

    def set_line_mode(self, data: bytes = b"") -> None:
        """Back to lines; ``data`` (e.g. what a raw handler read too far) is parsed first."""
        self._line_parser.set_line_mode()
        if data:
            self._line_parser.feed(data)

    def set_raw_mode(self) -> None:
        """Twisted's ``setRawMode``: every byte to ``receive_binary_data`` until ``set_line_mode()``."""
        self._line_parser.set_binary_mode(None)


#: EventMachine's name (``include EM::Protocols::LineText2``).
LineText2 = LineConnection
