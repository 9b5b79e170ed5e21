"""The I/O engine behind a Connection: socket, send queue, and how callbacks run.

Three ways to run a connection's callbacks share this socket and write path:
the default, shared runner greenlets (net/runners.py subclasses Transport);
``run_in_hub = True``, straight in the hub (runners.HubTransport); and
``greenlet_per_connection = True``, the actor loop here: the connection owns a
greenlet and a mailbox, and a persistent libev io watcher reads the socket *in
the hub* and switches straight into that greenlet with the bytes (two raw
greenlet switches per message, no Waiter, no watcher start/stop).
This is the byte fast path of the greenlet + mailbox primitive; workers and
the master's reply runners share the object one, :class:`packet_gevent.runner.Mailbox`.

When a callback blocks (``gevent.sleep``, a patched socket...), its greenlet
is parked by gevent itself.  A read event arriving meanwhile does not switch
into it: the read watcher is stopped and restarted when the greenlet is idle
again, so order holds and a busy connection applies backpressure by not
reading.  Everything else that must run "on the connection" (its timers,
worker replies, ``defer`` results) goes through the same mailbox, in arrival
order.

``send_data`` writes what the kernel takes now and queues the rest; a write
watcher flushes the queue in order and stops itself when it is empty.

TLS sockets cannot be read from the hub without blocking it, so they use a
slower path: a reader greenlet and a writer greenlet on gevent's SSL socket,
feeding the connection's callbacks through ``post``.
"""
from __future__ import annotations

import collections
import errno
import logging
import socket as _stdlib_socket
from typing import Any, Callable, Deque, Optional, Tuple

import _socket
import greenlet
import gevent
import gevent.event
import gevent.socket
from gevent.monkey import get_original

logger = logging.getLogger("packet_gevent.net.connection")

# The real os.close: gevent >= 25.8 patches os.close to defer closing to the
# next loop pass; a socket a child releases must be closed at once.  We close right away.
_os_close = get_original("os", "close")
# The hot path reads and writes plain stream sockets with os.read/os.write:
# the same read(2)/write(2) as recv/send without flags, minus the socket
# methods' tuple-parsing of their arguments (~500 instructions per call pair,
# a tenth of an echo round trip; benchmarks/echo_instructions.py).
_os_read = get_original("os", "read")
_os_write = get_original("os", "write")

#: Bytes asked for per read once a connection carries bulk data.  64 KiB
#: matches the socket buffer sizes Linux hands out by default on loopback;
#: bigger reads did not help the echo bench.
READ_SIZE = 65536
#: Bytes asked for per read while a connection's messages are small (every
#: connection starts here).  ``os.read(fd, n)`` allocates an n-byte bytes
#: object and shrinks it to what arrived: at 479 bytes (+ 33 of header = 512)
#: that is CPython's small-object allocator, at 64 KiB a libc malloc, realloc
#: and free, ~875 of the ~6,250 instructions of an echo round trip
#: (benchmarks/echo_instructions.py).  A read that fills it switches the
#: connection to READ_SIZE and reads the rest at once (so a message is not
#: split where it was not before); a read shorter than it switches back.
#: The adaptive buffer of Netty's AdaptiveRecvByteBufAllocator, in two sizes.
SMALL_READ = 479

#: Default outbound watermarks (bytes queued in user space).  A connection
#: whose queue grows past HIGH gets ``pause_writing()``; when the queue drains
#: below LOW it gets ``resume_writing()``.  The values follow asyncio's
#: defaults (64 KiB high, 16 KiB low).
DEFAULT_HIGH_WATER = 64 * 1024
DEFAULT_LOW_WATER = 16 * 1024

_raw_switch = greenlet.greenlet.switch
_getcurrent = greenlet.getcurrent
_CONNECTION_RESET = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
_WOULD_BLOCK = (BlockingIOError, InterruptedError)
#: What a failing user callback may raise: gevent.Timeout is a BaseException,
#: and one escaping a callback used to kill the greenlet silently (no unbind,
#: socket and max_connections slot kept) and raise into the hub.
CALLBACK_ERRORS = (Exception, gevent.Timeout)

Item = Tuple[Callable[..., Any], tuple]

# Transport states.
CONNECTING, OPEN, CLOSED = "connecting", "open", "closed"


class Transport:
    """Socket, greenlet and mailbox of one connection.  Internal."""

    __slots__ = (
        "conn", "reactor", "hub", "loop", "sock", "fd", "ssl_sock", "greenlet",
        "idle", "mailbox", "state", "reason", "read_watcher", "write_watcher",
        "busy_stopped", "user_paused", "outbuf", "out_size", "high_water",
        "low_water", "writing_paused", "close_after_writing", "wake_pending",
        "timers", "on_data", "peername", "idle_timeout", "idle_timer",
        "last_activity", "writer_event", "unbind_done", "tls_resume", "tls_handled", "in_hub",
        "direct_send", "write_shut", "read_eof", "drain_waiter", "read_size", "read_check",
    )

    #: The read watcher's callback for run_in_hub handlers: each subclass that
    #: runs them provides it (runners.HubTransport, udp, proxy).
    _on_readable_in_hub: Callable[[], None]

    def __init__(self, conn: Any, reactor: Any) -> None:
        self.conn = conn
        self.reactor = reactor
        self.hub = gevent.get_hub()
        self.loop = self.hub.loop
        self.sock = None
        self.ssl_sock = None
        self.fd = -1
        #: Handlers that promise never to block (``run_in_hub = True``) get no
        #: greenlet: their callbacks run straight in the hub.
        self.in_hub = bool(getattr(conn, "run_in_hub", False))
        self._init_actor()
        self.state = CONNECTING
        self.reason: Optional[BaseException] = None
        self.read_watcher = None
        self.write_watcher = None
        self.busy_stopped = False
        self.user_paused = False
        self.outbuf: Deque[bytes] = collections.deque()
        self.out_size = 0
        self.high_water = DEFAULT_HIGH_WATER
        self.low_water = DEFAULT_LOW_WATER
        self.writing_paused = False
        self.close_after_writing = False
        self.wake_pending = False
        self.timers: set = set()
        self.on_data: Callable[[bytes], Any] = conn.receive_data
        self.peername = None
        self.idle_timeout: Optional[float] = None
        self.idle_timer = None
        self.last_activity = 0.0
        self.writer_event = None
        self.unbind_done = False
        self.tls_resume = None
        #: The event the TLS reader waits on (set by _close too, so a reader
        #: whose chunk was dropped or that waits on a pause does not hang).
        self.tls_handled = None
        #: True while send() may write straight to the socket (open, plain,
        #: no close pending): one flag test on the hot path.
        self.direct_send = False
        #: Half-close: 0 open for writing, 1 close_write() waits for the queue
        #: to drain, 2 shut down (SHUT_WR sent).
        self.write_shut = 0
        #: The peer's EOF arrived and the handler keeps the connection open.
        self.read_eof = False
        #: An Event set when the queue drains to the low watermark (or the
        #: connection closes): how a file streamer waits (net/sendfile.py).
        self.drain_waiter = None
        #: Bytes per read (SMALL_READ or READ_SIZE), and the length of a read
        #: at or above which _resize_read runs: a filled small read, or any
        #: read while reading big (to notice when messages are small again).
        self.read_size = SMALL_READ
        self.read_check = SMALL_READ

    def _init_actor(self) -> None:
        """Give the connection what runs its callbacks (a subclass may share one)."""
        self.greenlet = None if self.in_hub else greenlet.greenlet(self._main, parent=self.hub)
        self.idle = self.in_hub
        self.mailbox: Deque[Item] = collections.deque()

    # ------------------------------------------------------------------ start
    def start(self, first: Callable[[], Any], may_block: bool = False) -> None:
        """Start the greenlet with ``first`` as its first item (from any greenlet).

        ``may_block``: ``first`` may block (connect, TLS handshake) even for a
        run_in_hub handler, which then runs it in a greenlet of its own.
        """
        if self.in_hub:
            if may_block:
                gevent.spawn_raw(self._invoke, (first, ()))
            else:
                self.post(first)
        elif _getcurrent() is self.hub:
            self.greenlet.switch((first, ()))
        else:
            self.mailbox.append((first, ()))
            self.loop.run_callback(self._start_from_hub)

    def _start_from_hub(self) -> None:
        if not self.greenlet:  # not started yet (dead greenlets are falsy too)
            self.greenlet.switch(None)

    def attach(self, sock: Any, ssl_sock: Any = None) -> None:
        """Take over a connected socket (a raw ``_socket.socket``, non-blocking)."""
        self.sock = sock
        self.fd = sock.fileno()
        self.ssl_sock = ssl_sock
        self.state = OPEN
        self.direct_send = ssl_sock is None and not self.close_after_writing
        if self.idle_timeout:
            self.last_activity = self.loop.now()
            self._arm_idle_timer(self.idle_timeout)
        if ssl_sock is None:
            self.read_watcher = self.loop.io(self.fd, 1)
            self.write_watcher = self.loop.io(self.fd, 2)
            if not self.user_paused:  # pause_reading() may come first (post_init)
                self.read_watcher.start(self._on_readable_in_hub if self.in_hub else self._on_readable)
            if self.outbuf:  # sent while connecting (e.g. from post_init)
                self.write_watcher.start(self._on_writable)
        else:
            self.writer_event = gevent.event.Event()
            if self.outbuf:
                self.writer_event.set()
            gevent.spawn(self._tls_reader)
            gevent.spawn(self._tls_writer)

    # ------------------------------------------------------- the actor loop
    def _main(self, item: Any) -> None:
        # The hot loop: ``item`` is bytes (data read by the hub), a (fn, args)
        # tuple, or None (just drain the mailbox).
        mailbox = self.mailbox
        hub = self.hub
        on_data = self.on_data
        try:
            while True:
                if item is not None:
                    if item.__class__ is bytes:
                        try:
                            on_data(item)
                        except CALLBACK_ERRORS as exc:
                            self._callback_failed(on_data, exc)
                    else:
                        self._invoke(item)
                while mailbox:
                    self._invoke(mailbox.popleft())
                if self.state is CLOSED:
                    if not self.unbind_done:
                        self._run_unbind()
                    return
                if self.busy_stopped and not self.user_paused:
                    self.busy_stopped = False
                    self.read_watcher.start(self._on_readable)
                self.idle = True
                item = _raw_switch(hub)
                self.idle = False
        except greenlet.GreenletExit:
            # Killed by a reactor stop that ran out of patience.
            if not self.unbind_done:
                from ..errors import PacketError
                self._close(PacketError("a callback was still blocked when Reactor.stop's grace "
                                        "period ended; the connection was closed under it"))
                self._run_unbind()

    def pending(self) -> bool:
        """True while a callback runs or blocks, calls wait for one, or output is queued."""
        return not self.idle or bool(self.outbuf) or bool(self.mailbox)

    def _invoke(self, item: Item) -> None:
        fn, args = item
        try:
            fn(*args)
        except CALLBACK_ERRORS as exc:
            self._callback_failed(fn, exc)

    def _invoke_if_open(self, item: Item) -> None:  # in the hub, for run_in_hub handlers
        # A close in between drops the call, as it empties a greenlet's mailbox.
        if self.state is not CLOSED:
            self._invoke(item)

    def _callback_failed(self, fn: Any, exc: BaseException) -> None:
        """A user callback raised: log it with its traceback (or hand it to the reactor's
        error_handler), end this connection."""
        if getattr(self.reactor, "_error_handler", None) is None:
            logger.error("callback %s of %r raised; closing the connection",
                         getattr(fn, "__name__", fn), self.conn, exc_info=exc)
        else:
            self.reactor._report_error(exc, self.conn)
        self._close(exc)

    def _run_unbind(self) -> None:
        self.unbind_done = True
        if self.mailbox:
            self.mailbox.clear()
        # Taken before unbind: an unbind that reconnects gives the handler a new
        # signature, which must stay registered.
        signature = self.conn.signature
        try:
            self.conn._call_unbind(self.reason)
        except CALLBACK_ERRORS as exc:
            if getattr(self.reactor, "_error_handler", None) is None:
                logger.exception("unbind of %r raised", self.conn)
            else:  # EventMachine's error_handler gets unbind's exceptions too
                self.reactor._report_error(exc, self.conn)
        finally:
            self.reactor._connection_ended(self.conn, signature)

    def post(self, fn: Callable[..., Any], args: tuple = ()) -> bool:
        """Run ``fn(*args)`` in the connection's greenlet, after what is queued.

        Returns False (and drops the call) when the connection has ended.
        """
        if self.unbind_done or self.state is CLOSED:
            return False
        if self.in_hub:
            if _getcurrent() is self.hub:
                self._invoke((fn, args))
            else:
                self.loop.run_callback(self._invoke_if_open, (fn, args))
            return True
        if self.idle and not self.mailbox and _getcurrent() is self.hub:
            self.greenlet.switch((fn, args))
        else:
            self.mailbox.append((fn, args))
            if self.idle and not self.wake_pending:
                self.wake_pending = True
                self.loop.run_callback(self._wake)
        return True

    def _wake(self) -> None:  # in the hub
        self.wake_pending = False
        if self.idle and self.greenlet:
            self.greenlet.switch(None)

    # ------------------------------------------------------------- reading
    def _on_readable(self) -> None:  # in the hub
        if self.idle:
            try:
                data = _os_read(self.fd, self.read_size)
            except _WOULD_BLOCK:
                return
            except OSError as exc:
                self._abort(exc)
                return
            if data:
                if len(data) >= self.read_check:
                    data = self._resize_read(data)
                if self.idle_timeout:
                    self.last_activity = self.loop.now()
                self.greenlet.switch(data)
            else:
                self._abort(None)
        else:
            # The callback is blocked: stop reading until it returns.
            self.read_watcher.stop()
            self.busy_stopped = True

    def _resize_read(self, data: bytes) -> bytes:
        """Adapt the read size to what arrives (see SMALL_READ); returns the data to deliver."""
        if self.read_size == SMALL_READ:  # filled: a bigger message, or bulk
            self.read_size = READ_SIZE
            self.read_check = 0
            try:
                more = _os_read(self.fd, READ_SIZE)
            except _WOULD_BLOCK:
                return data
            except OSError as exc:  # reported once: after this data, not instead of it
                self.loop.run_callback(self._abort, exc)
                return data
            return data + more if more else data  # EOF (b""): the next read sees it again
        if len(data) < SMALL_READ:
            self.read_size = self.read_check = SMALL_READ
        return data

    def _tls_reader(self) -> None:
        sock = self.ssl_sock
        while self.state is OPEN:
            if self.user_paused:  # paused before this read (post_init, another greenlet)
                resumed = self.tls_resume = self.tls_handled = gevent.event.Event()
                resumed.wait()
                continue
            try:
                data = sock.recv(READ_SIZE)
            except (OSError, ValueError) as exc:
                self._abort(exc if self.state is OPEN else None)
                return
            if not data:
                self._abort(None)
                return
            if self.idle_timeout:
                self.last_activity = self.loop.now()
            # Backpressure: read the next chunk only after this one was handled
            # (and while the user has not paused reading).
            handled = self.tls_handled = gevent.event.Event()
            if not self.post(self._tls_deliver, (data, handled)):
                return
            handled.wait()

    def _tls_deliver(self, data: bytes, handled: Any) -> None:
        try:
            self.on_data(data)
        finally:
            if self.user_paused:
                self.tls_resume = handled  # resume_reading() releases the reader
            else:
                handled.set()

    def pause_reading(self) -> None:
        self.user_paused = True
        if self.read_watcher is not None:
            self.read_watcher.stop()

    def resume_reading(self) -> None:
        if not self.user_paused:
            return
        self.user_paused = False
        if self.tls_resume is not None:
            self.tls_resume.set()
            self.tls_resume = None
        if self.state is OPEN and self.read_watcher is not None:
            if self.in_hub:
                self.read_watcher.start(self._on_readable_in_hub)
            elif self.idle or _getcurrent() is self.greenlet:
                self.busy_stopped = False
                self.read_watcher.start(self._on_readable)
            else:
                self.busy_stopped = True

    # ------------------------------------------------------------- writing
    def send(self, data: Any) -> None:
        if data.__class__ is not bytes:  # bytes pay for this one check only
            data = _as_bytes(data)
        if self.outbuf or not self.direct_send:
            self._send_slow(data)
            return
        try:
            sent = _os_write(self.fd, data)
        except _WOULD_BLOCK:
            sent = 0
        except OSError as exc:
            self._abort(exc)
            return
        if self.idle_timeout:  # sending is activity too (EventMachine's inactivity timeout)
            self.last_activity = self.loop.now()
        if sent < len(data):
            self._queue(data[sent:])

    def _send_slow(self, data: bytes) -> None:
        # While CONNECTING (send_data from post_init) data is queued and
        # flushed by attach(), as EventMachine does.
        if self.state is CLOSED or self.close_after_writing or self.write_shut:
            logger.debug("send_data on closed connection %r dropped (%d bytes)",
                         self.conn, len(data))
        elif data:
            self._queue(data)

    def _queue(self, data: bytes) -> None:
        self.outbuf.append(data)
        self.out_size += len(data)
        limit = self.conn.max_outbound_size
        if limit is not None and self.out_size > limit:
            from ..errors import OutboundOverflow
            logger.warning("closing %r: %d bytes queued for a peer that does not read "
                           "(max_outbound_size=%d)", self.conn, self.out_size, limit)
            self._close(OutboundOverflow(
                f"{self.out_size} bytes queued for a peer that is not reading, over "
                f"max_outbound_size={limit}; respect pause_writing() or raise the limit"))
            return
        if self.ssl_sock is not None:
            self.writer_event.set()
        elif len(self.outbuf) == 1 and self.write_watcher is not None:
            self.write_watcher.start(self._on_writable)
        if not self.writing_paused and self.out_size > self.high_water:
            self.writing_paused = True
            current = _getcurrent()
            if current is self.greenlet or (self.in_hub and current is self.hub):
                # Called from this connection's own callback (a producer loop):
                # tell it now, as asyncio does, so the loop can stop.
                self._invoke((self.conn.pause_writing, ()))
            else:
                self.post(self.conn.pause_writing)

    def _on_writable(self) -> None:  # in the hub
        outbuf = self.outbuf
        sock = self.sock
        while outbuf:
            chunk = outbuf[0]
            try:
                sent = sock.send(chunk)
            except _WOULD_BLOCK:
                break
            except OSError as exc:
                self._abort(exc)
                return
            self.out_size -= sent
            if sent < len(chunk):
                outbuf[0] = chunk[sent:]
                break
            outbuf.popleft()
            if len(outbuf) > 1 and len(outbuf[0]) < 16384:
                self._coalesce()
        if not outbuf:
            self.write_watcher.stop()
        self._after_write()

    def _coalesce(self) -> None:
        """Join small queued chunks so each send carries up to ~256 KiB."""
        outbuf = self.outbuf
        parts = []
        total = 0
        while outbuf and total < 262144:
            part = outbuf.popleft()
            parts.append(part)
            total += len(part)
        outbuf.appendleft(b"".join(parts))

    def _after_write(self) -> None:
        if self.idle_timeout:
            self.last_activity = self.loop.now()
        if self.drain_waiter is not None and self.out_size <= self.low_water:
            self.drain_waiter.set()
        if self.writing_paused and self.out_size <= self.low_water:
            self.writing_paused = False
            self.post(self.conn.resume_writing)
        if self.close_after_writing and not self.outbuf and not self.out_size:
            self._close(self.reason)
        elif self.write_shut == 1 and not self.out_size:
            self._shutdown_write()

    def _tls_writer(self) -> None:
        event = self.writer_event
        while self.state is OPEN:
            event.wait()
            event.clear()
            while self.outbuf and self.state is OPEN:
                if len(self.outbuf) > 1 and len(self.outbuf[0]) < 16384:
                    self._coalesce()  # one TLS record and write for many small chunks
                chunk = self.outbuf.popleft()
                try:
                    self.ssl_sock.sendall(chunk)
                except (OSError, ValueError) as exc:
                    self._abort(exc)
                    return
                self.out_size -= len(chunk)
                self._after_write()

    def close_when_flushed(self, reason: Optional[BaseException] = None) -> None:
        """Close once the queue is written; ``unbind`` then gets ``reason``."""
        if self.state is CLOSED:
            return
        self.close_after_writing = True
        self.direct_send = False
        if reason is not None and self.reason is None:
            self.reason = reason  # kept by _after_write's close
        # out_size, not outbuf: the TLS writer pops a chunk before its sendall
        # and counts it as sent only after; closing then would cut that chunk.
        if not self.out_size:
            self._close(self.reason)

    # ------------------------------------------------------------ STARTTLS
    def start_tls(self, context: Any, server_side: bool, server_hostname: Optional[str],
                  timeout: Optional[float]) -> bool:
        """Switch this live plain connection to TLS (STARTTLS), in its own greenlet.

        What was queued before is written in the clear first; then the
        handshake runs (blocking this greenlet only, bounded by ``timeout``)
        and the connection goes on through the TLS reader and writer
        greenlets, like one that was TLS from the start.  On failure the
        connection is closed with the error as reason and False is returned.
        """
        from ..errors import ReactorError
        from gevent.socket import wait_write
        from gevent.ssl import SSLSocket
        if self.ssl_sock is not None:
            raise ReactorError(f"{self.conn!r} already speaks TLS")
        if self.state is not OPEN or self.sock is None:
            raise ReactorError(f"start_tls needs a live connection ({self.conn!r} is {self.state}): "
                               "call it from connection_completed or a later callback")
        if self.in_hub or _getcurrent() is not self.greenlet:
            raise ReactorError("start_tls runs the handshake in the connection's greenlet: call it "
                               "from one of its callbacks (not from a run_in_hub handler)")
        self.direct_send = False  # from now on send() queues; the TLS writer will flush
        self.read_watcher.stop()  # the handshake reads the socket from here on
        try:
            while self.outbuf and self.state is OPEN:  # the plain reply to "STARTTLS" first
                wait_write(self.fd, timeout)
                self._on_writable()
        except OSError as exc:  # socket.timeout too
            self._close(exc)
            return False
        if self.state is not OPEN:
            return False
        for watcher in (self.read_watcher, self.write_watcher):
            watcher.close()
        self.read_watcher = self.write_watcher = None
        self.busy_stopped = False
        raw = self.sock
        gsock = self.sock = gevent.socket.socket(raw.family, raw.type, raw.proto, fileno=raw.detach())
        gsock.settimeout(timeout)
        try:
            tls = SSLSocket(sock=gsock, server_side=server_side, _context=context,
                            server_hostname=server_hostname)
        except CALLBACK_ERRORS as exc:
            logger.debug("start_tls on %r failed: %r", self.conn, exc)
            self._close(exc)  # closes gsock
            return False
        except BaseException:  # killed by a reactor stop: give the fd back
            self._close(None)
            raise
        if self.state is not OPEN:  # closed during the handshake
            tls.close()
            return False
        tls.settimeout(None)
        self.sock = self.ssl_sock = tls
        self.writer_event = gevent.event.Event()
        if self.outbuf:
            self.writer_event.set()
        gevent.spawn(self._tls_reader)
        gevent.spawn(self._tls_writer)
        return True

    # ----------------------------------------------------------- half-close
    def close_write(self) -> None:
        """Shut down our sending side (SHUT_WR) once the queue is written; keep reading."""
        if self.state is CLOSED or self.write_shut:
            return
        from ..errors import ReactorError
        if self.state is not OPEN:
            raise ReactorError(f"close_write needs a live connection ({self.conn!r} is still "
                               f"{self.state}): call it from connection_completed or later")
        if self.ssl_sock is not None:
            raise ReactorError("close_write is not available on a TLS connection (a TCP "
                               "half-close would cut the TLS stream): use close_connection_after_writing")
        self.write_shut = 1
        self.direct_send = False
        if not self.out_size:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        self.write_shut = 2
        if self.read_eof:  # both directions are done
            self._close(None)
            return
        try:
            self.sock.shutdown(_stdlib_socket.SHUT_WR)
        except OSError as exc:
            self._abort(exc)

    def _peer_eof(self) -> bool:
        """The peer's EOF: keep the connection open for writing if the handler asks to."""
        conn = self.conn
        handler = getattr(conn, "eof_received", None) or getattr(conn, "read_connection_lost", None)
        if handler is None or self.write_shut == 2:
            return False
        self.read_eof = True
        if self.read_watcher is not None:  # an fd at EOF stays readable: stop watching it
            self.read_watcher.stop()
            self.read_watcher.close()
            self.read_watcher = None
        self.busy_stopped = False
        self.post(handler)
        return True

    # ------------------------------------------------------------- closing
    def _abort(self, reason: Optional[BaseException]) -> None:
        """The peer or the OS ended the connection (EOF when reason is None)."""
        if self.state is CLOSED:
            return
        if reason is None and self.state is OPEN and self._peer_eof():
            return
        if reason is not None and not isinstance(reason, _CONNECTION_RESET):
            logger.debug("connection %r failed: %r", self.conn, reason)
        self._close(reason)

    def _close(self, reason: Optional[BaseException]) -> None:
        """Close now (idempotent) and arrange for ``unbind`` to run once."""
        if self.state is CLOSED:
            return
        self.state = CLOSED
        self.direct_send = False
        self.reason = reason
        for watcher in (self.read_watcher, self.write_watcher, self.idle_timer):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        self.read_watcher = self.write_watcher = self.idle_timer = None
        for timer in list(self.timers):
            timer.cancel()
        self.outbuf.clear()
        self.out_size = 0
        if self.drain_waiter is not None:
            self.drain_waiter.set()
        if self.ssl_sock is not None:
            self.writer_event.set()
            if self.tls_handled is not None:
                self.tls_handled.set()
            try:
                self.ssl_sock.close()
            except OSError:
                pass
        if self.sock is not None:
            fd = self.sock.detach()
            if fd >= 0:
                try:
                    _os_close(fd)
                except OSError:
                    pass
        self._arrange_unbind()

    def _arrange_unbind(self) -> None:
        """After _close: drop what is queued and have ``unbind`` run once, in order."""
        never_started = not self.in_hub and not self.greenlet and not self.greenlet.dead
        if never_started and self.mailbox:
            # start() has queued the first item and scheduled the first switch:
            # keep that item alone (it runs post_init, then sees CLOSED), so
            # post_init still comes before unbind.
            first = self.mailbox[0]
            self.mailbox.clear()
            self.mailbox.append(first)
            return
        self.mailbox.clear()
        if self.in_hub:
            self.loop.run_callback(self._run_unbind)
            return
        # Wake the greenlet (if idle) so it runs unbind and finishes.
        if self.greenlet and self.idle:
            if _getcurrent() is self.hub:
                self.greenlet.switch(None)
            elif not self.wake_pending:
                self.wake_pending = True
                self.loop.run_callback(self._wake)
        elif not self.greenlet and not self.greenlet.dead:
            # Never started (e.g. closed while connecting before the first switch).
            self.mailbox.append((lambda: None, ()))
            self.loop.run_callback(self._start_from_hub)

    # ------------------------------------------------------------ timeouts
    def set_idle_timeout(self, seconds: Optional[float]) -> None:
        self.idle_timeout = seconds or None
        if self.idle_timer is not None:
            self.idle_timer.stop()
            self.idle_timer.close()
            self.idle_timer = None
        if self.idle_timeout and self.state is OPEN:
            self.last_activity = self.loop.now()
            self._arm_idle_timer(self.idle_timeout)

    def _arm_idle_timer(self, after: float) -> None:
        if self.idle_timer is None:
            self.idle_timer = self.loop.timer(after)
        else:
            self.idle_timer.stop()
            self.idle_timer.after = after  # type: ignore[attr-defined]
        self.idle_timer.start(self._on_idle_timer)

    def _on_idle_timer(self) -> None:  # in the hub
        if self.state is not OPEN or not self.idle_timeout:
            return
        if not self.idle:
            # Our own callback is busy (maybe blocked on a worker): the peer is
            # waiting for us, not silent.  Count idleness from now on.
            self.last_activity = self.loop.now()
        idle_for = self.loop.now() - self.last_activity
        if idle_for >= self.idle_timeout:
            from ..errors import IdleTimeout
            logger.info("closing %r: no data in or out for %.3f s (idle_timeout)", self.conn, idle_for)
            self._close(IdleTimeout(f"no data received or sent for {self.idle_timeout} s; "
                                    "closed by idle_timeout"))
        else:
            self.idle_timer.close()
            self.idle_timer = None
            self._arm_idle_timer(self.idle_timeout - idle_for)


def _as_bytes(data: Any) -> bytes:
    """``send_data``'s input as bytes: bytes-like as is, str as UTF-8, anything else refused."""
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (int, float, bool)) or data is None:
        # bytes(5) would be five NUL bytes: refuse numbers before the buffer protocol.
        raise TypeError(f"send_data takes bytes (or str, sent as UTF-8), not "
                        f"{type(data).__name__}: {data!r}; send str(value).encode() or use "
                        f"send_object()")
    try:
        return memoryview(data).tobytes()
    except TypeError:
        raise TypeError(f"send_data takes bytes, a bytes-like object or str (sent as UTF-8), "
                        f"not {type(data).__name__}; encode it first (e.g. "
                        f"json.dumps(obj).encode()) or use send_object()") from None


def raw_socket_from(sock: Any) -> Any:
    """Turn a (gevent or stdlib) socket object into a non-blocking ``_socket.socket``.

    The fd is taken over: the original object no longer owns it.
    """
    family, type_, proto = sock.family, sock.type, sock.proto
    fd = sock.detach()
    raw = _socket.socket(family, type_, proto, fd)
    raw.setblocking(False)
    if family in (_stdlib_socket.AF_INET, _stdlib_socket.AF_INET6):
        try:
            raw.setsockopt(_stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_NODELAY, 1)
        except OSError as exc:  # not fatal: e.g. a socket type without Nagle
            if exc.errno != errno.EOPNOTSUPP:
                logger.debug("TCP_NODELAY failed: %r", exc)
    return raw
