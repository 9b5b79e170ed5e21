"""Tests for packet_gevent.ipc.channel over real socketpairs to real child processes."""
from __future__ import annotations

import gc
import json
import os
import pickle
import socket
import threading
import tracemalloc
import weakref

import gevent
import gevent.event
import pytest

from packet_gevent.ipc.blocking import BlockingChannel
from packet_gevent.ipc.channel import OOB_THRESHOLD, Channel
from packet_gevent.ipc.wire import MessageEncoder
from packet_gevent.errors import ChannelBusy, ChannelClosed, FrameError, SerializationError
from packet_gevent.framing import encode_frame
from packet_gevent.ipc.process import spawn_child

from . import helpers_process as h

BIG = OOB_THRESHOLD * 2


@pytest.fixture(params=["blocking", "hub"])
def echo(request):
    """A Channel to a child echoing with a BlockingChannel, or with a Channel in its hub."""
    target = h.echo_blocking if request.param == "blocking" else h.echo_hub
    child = spawn_child(target, name=f"echo-{request.param}")
    channel = Channel(child.sock)
    yield channel
    channel.close()
    h.wait_child(child)
    assert child.exitcode == 0


def _spawn(target, *args, **kwargs):
    child = spawn_child(target, args=args)
    return child, Channel(child.sock, **kwargs)


class Collector:
    """start() callbacks recording messages and the close, with an event to wait on."""

    def __init__(self, expect=None):
        self.messages = []
        self.closed = gevent.event.AsyncResult()
        self.expect = expect
        self.enough = gevent.event.Event()

    def on_message(self, obj):
        self.messages.append(obj)
        if self.expect is not None and len(self.messages) >= self.expect:
            self.enough.set()

    def on_close(self, exc):
        assert not self.closed.ready(), "on_close called twice"
        self.closed.set(exc)

    def close_reason(self):
        return self.closed.get(timeout=h.TIMEOUT)


# -- round trips ------------------------------------------------------------------

def test_round_trip_of_objects(echo):
    big = bytes(range(256)) * (BIG // 256)
    objects = [
        None, 0, -1, 2 ** 100, 1.5, "text", "ünïcode", b"", b"bytes",
        [1, [2, [3]]], (1, 2), {"a": {"b": [None]}}, {1, 2, 3},
        h.Point(1, 2), big,                       # top level: out of band
        ("reply", 7, big),                        # depth 1
        ("task", 8, (big, 1), {"k": big}),        # depth 2
        [[[big]]],                                # depth 3: in band, same result
        bytearray(b"ba") * BIG,                   # in band
        pickle.PickleBuffer(bytearray(BIG)),      # protocol-5 buffer, out of band
        pickle.PickleBuffer(bytearray(b"small")),  # small ones too
    ]
    for obj in objects:
        echo.send(obj)
        back = echo.recv(timeout=h.TIMEOUT)
        if isinstance(obj, pickle.PickleBuffer):
            assert type(back) is bytearray and back == obj.raw()
        else:
            assert back == obj and type(back) is type(obj)


def test_many_small_messages_arrive_in_order(echo):
    got = Collector(expect=20_000)
    echo.start(got.on_message, got.on_close)
    for start in range(0, 10_000, 1000):
        for i in range(start, start + 1000):
            echo.send(i)
        gevent.sleep(0)
    echo.send_many(range(10_000, 20_000))
    assert got.enough.wait(h.TIMEOUT)
    assert got.messages == list(range(20_000))


def test_16_mib_both_ways_intact(echo):
    data = os.urandom(16 * 1024 * 1024)
    for _ in range(2):
        echo.send(data)
        back = echo.recv(timeout=h.TIMEOUT)
        assert type(back) is bytes and back == data


def test_frames_queued_in_one_loop_turn_leave_in_one_write():
    child, channel = _spawn(h.report_first_batch)
    for i in range(100):
        channel.send(i)
    assert channel.pending_bytes > 0  # nothing written before the hub runs
    assert channel.recv(timeout=h.TIMEOUT) == 100
    channel.close()
    h.wait_child(child)


def test_pending_bytes_and_flush():
    child, channel = _spawn(h.echo_blocking)
    data = bytes(8 * 1024 * 1024)
    channel.send(data)
    assert channel.pending_bytes >= len(data)
    channel.flush(timeout=h.TIMEOUT)
    assert channel.pending_bytes == 0
    assert channel.recv(timeout=h.TIMEOUT) == data
    channel.close()
    h.wait_child(child)


@pytest.mark.parametrize("kind", [Channel, BlockingChannel])
def test_a_big_payload_is_received_into_the_object_handed_out(kind):
    # The decoder's buffer *is* the bytes object recv() returns: one 4 MiB
    # allocation in the receiver, where a copy out of a bytearray took two.
    size = 4 * 1024 * 1024
    chunks, _ = MessageEncoder(1 << 30, None).encode(bytes(range(256)) * (size // 256))
    wire = b"".join(bytes(chunk) for chunk in chunks)
    mine, peer = socket.socketpair(socket.AF_UNIX)
    channel = kind(mine)
    sender = threading.Thread(target=peer.sendall, args=(wire,), daemon=True)
    tracemalloc.start()
    try:
        sender.start()  # a real thread: the receiver below may block the hub
        back = channel.recv()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        sender.join(h.TIMEOUT)
        channel.close()
        peer.close()
    assert type(back) is bytes and back == bytes(range(256)) * (size // 256)
    assert peak < size * 3 // 2, f"the payload was copied on receipt (peak {peak} bytes)"


class _BusyPeer:
    """The channel's socket, with a peer that writes more after each read of ours.

    Stands for a peer that keeps writing while we decode: deterministic,
    where a real busy child would make the test depend on timing.
    """

    def __init__(self, sock, peer, more):
        self._sock, self._peer, self._more = sock, peer, list(more)
        self.reads = 0

    def recv_into(self, *args):
        n = self._sock.recv_into(*args)
        self.reads += 1
        if self._more:
            self._peer.sendall(self._more.pop(0))
        return n

    def __getattr__(self, name):
        return getattr(self._sock, name)


@pytest.mark.parametrize("how", ["start", "recv"])
def test_a_short_read_hands_over_its_messages_even_with_a_small_frame_cut_off(how):
    # Before: a short read that ended inside a small frame read on, so a peer
    # writing while we decoded kept us reading (up to READ_BUDGET) before
    # anything was handed over.
    mine, peer = socket.socketpair(socket.AF_UNIX)
    channel = Channel(mine)
    first, second, third = (encode_frame(pickle.dumps(word * 50, 5)) for word in "abc")
    busy = _BusyPeer(channel._sock, peer, more=[second[40:] + third])
    channel._sock = busy
    peer.sendall(first + second[:40])  # one whole message, then a cut small frame
    try:
        if how == "start":
            got = Collector(expect=3)
            delivered = []
            channel.start(lambda obj: (delivered.append((obj, busy.reads)), got.on_message(obj)),
                          got.on_close)
            assert got.enough.wait(h.TIMEOUT)
        else:
            delivered = [(channel.recv(timeout=h.TIMEOUT), busy.reads) for _ in range(3)]
        assert [obj for obj, _ in delivered] == ["a" * 50, "b" * 50, "c" * 50]
        assert delivered[0][1] == 1, "the first message waited for a second read"
    finally:
        channel.close()
        peer.close()


# -- serialization errors ------------------------------------------------------------

def test_unpicklable_object_fails_at_send_and_the_channel_still_works(echo):
    with pytest.raises(SerializationError) as info:
        echo.send(lambda: None)
    message = str(info.value)
    assert "function" in message and "top-level" in message and "cloudpickle" in message
    assert isinstance(info.value.__cause__, Exception)
    with pytest.raises(SerializationError, match="message 1 of the batch"):
        echo.send_many([1, lambda: None, 2])  # all or none
    echo.send("still works")
    assert echo.recv(timeout=h.TIMEOUT) == "still works"
    assert echo.pending_bytes == 0


def test_unpicklable_reply_closes_the_channel_with_serialization_error():
    child, channel = _spawn(h.send_unimportable)
    got = Collector()
    channel.start(got.on_message, got.on_close)
    reason = got.close_reason()
    assert isinstance(reason, SerializationError) and "only_in_the_child" in str(reason)
    assert got.messages == [] and channel.closed
    h.wait_child(child)


# -- end of stream ------------------------------------------------------------------

def test_clean_eof_after_messages_with_callbacks():
    child, channel = _spawn(h.send_then_exit, [1, "two", b"3" * BIG])
    got = Collector()
    channel.start(got.on_message, got.on_close)
    assert got.close_reason() is None
    assert got.messages == [1, "two", b"3" * BIG] and channel.closed
    h.wait_child(child)


def test_clean_eof_with_recv():
    child, channel = _spawn(h.send_then_exit, [1, 2])
    assert [channel.recv(timeout=h.TIMEOUT), channel.recv(timeout=h.TIMEOUT)] == [1, 2]
    for _ in range(2):
        with pytest.raises(EOFError):
            channel.recv(timeout=h.TIMEOUT)
    h.wait_child(child)


def test_replies_sent_before_the_peer_died_are_still_read_after_a_failed_write():
    child, channel = _spawn(h.send_then_exit, ["last words"])
    h.wait_child(child)
    channel.send("too late")
    gevent.sleep(0)  # the flush meets EPIPE
    with pytest.raises(ChannelClosed):
        channel.send("later")
    assert channel.recv(timeout=h.TIMEOUT) == "last words"
    with pytest.raises(EOFError):
        channel.recv(timeout=h.TIMEOUT)


def _cut_message():
    chunks, _ = MessageEncoder(1 << 30, None).encode(b"x" * BIG)  # head, header, buffer
    return bytes(chunks[0])


@pytest.mark.parametrize("data, match", [
    (b"000000100abc", "cut short"),              # inside a frame's payload
    (b"0000", "cut short"),                      # inside a header
    (_cut_message(), "message was cut short"),   # head announced a buffer that never came
])
def test_eof_inside_a_frame_or_message_is_a_frame_error(data, match):
    child, channel = _spawn(h.write_raw, data)
    got = Collector()
    channel.start(got.on_message, got.on_close)
    reason = got.close_reason()
    assert isinstance(reason, FrameError) and match in str(reason)
    h.wait_child(child)
    child, channel = _spawn(h.write_raw, data)
    with pytest.raises(FrameError, match=match):
        channel.recv(timeout=h.TIMEOUT)
    h.wait_child(child)


def test_corrupt_stream_closes_with_frame_error():
    child, channel = _spawn(h.write_raw, b"garbage!!hello")
    got = Collector()
    channel.start(got.on_message, got.on_close)
    reason = got.close_reason()
    assert isinstance(reason, FrameError) and "bad frame header" in str(reason)
    assert got.messages == [] and channel.closed
    with pytest.raises(ChannelClosed):
        channel.send(1)
    h.wait_child(child)


def test_message_size_limit_on_both_sides():
    child, channel = _spawn(h.echo_blocking, max_message_size=1000)
    with pytest.raises(FrameError, match="max_message_size"):
        channel.send(b"x" * 2000)
    channel.send(b"x" * 100)  # unharmed
    assert channel.recv(timeout=h.TIMEOUT) == b"x" * 100
    channel.close()
    h.wait_child(child)
    child, channel = _spawn(h.send_then_exit, [b"y" * 2000], max_message_size=1000)
    got = Collector()
    channel.start(got.on_message, got.on_close)
    assert isinstance(got.close_reason(), FrameError)
    h.wait_child(child)


# -- API behaviour -----------------------------------------------------------------

def test_close_runs_on_close_once_and_later_use_raises(echo):
    got = Collector()
    echo.start(got.on_message, got.on_close)
    echo.close()
    echo.close()
    assert got.close_reason() is None and echo.closed
    with pytest.raises(ChannelClosed):
        echo.send(1)
    with pytest.raises(ChannelBusy):  # a started channel has no recv()
        echo.recv()


def test_recv_after_close_raises_channel_closed(echo):
    echo.close()
    with pytest.raises(ChannelClosed):
        echo.recv()


def test_recv_timeout_loses_nothing(echo):
    with pytest.raises(TimeoutError):
        echo.recv(timeout=0.01)
    echo.send("late")
    assert echo.recv(timeout=h.TIMEOUT) == "late"


def test_on_message_raising_closes_with_that_error(echo):
    got = Collector()

    def on_message(obj):
        raise ZeroDivisionError("bad handler")

    echo.start(on_message, got.on_close)
    echo.send(1)
    assert isinstance(got.close_reason(), ZeroDivisionError)


def test_custom_codec():
    child = spawn_child(lambda sock: _json_echo(sock))
    channel = Channel(child.sock, dumps=lambda o: json.dumps(o).encode(), loads=json.loads)
    channel.send({"a": [1, 2]})
    assert channel.recv(timeout=h.TIMEOUT) == {"a": [1, 2]}
    channel.close()
    h.wait_child(child)


def _json_echo(sock):
    channel = BlockingChannel(sock, dumps=lambda o: json.dumps(o).encode(), loads=json.loads)
    channel.send(channel.recv())
    return 0


def test_only_unix_socketpairs_are_accepted():
    tcp = socket.socket()
    try:
        with pytest.raises(ValueError, match="AF_UNIX"):
            Channel(tcp)
    finally:
        tcp.close()


# -- the blocking end ----------------------------------------------------------------

def test_blocking_channel_batches_eof_and_cut_frames():
    a, b = socket.socketpair()
    payloads = [pickle.dumps(i, 5) for i in range(5)]
    a.sendall(b"".join(encode_frame(p) for p in payloads))
    channel = BlockingChannel(b)
    assert channel.recv() == 0
    assert channel.recv_batch() == [1, 2, 3, 4]
    a.sendall(encode_frame(pickle.dumps("x", 5)))
    a.close()
    assert channel.recv() == "x"
    with pytest.raises(EOFError):
        channel.recv()
    channel.close()
    with pytest.raises(ChannelClosed):
        channel.send(1)

    a, b = socket.socketpair()
    a.sendall(b"000000050abc")
    a.close()
    channel = BlockingChannel(b)
    with pytest.raises(FrameError, match="cut short"):
        channel.recv()
    channel.close()


def test_blocking_channel_sends_big_and_many_in_one_call():
    a, b = socket.socketpair()
    sender = BlockingChannel(a)
    receiver = BlockingChannel(b)
    big = b"z" * BIG
    sender.send_many([1, big, 2])
    assert [receiver.recv(), receiver.recv(), receiver.recv()] == [1, big, 2]
    sender.close()
    receiver.close()


def test_a_closed_channel_frees_its_owner_without_a_gc_collection():
    """The owner's callbacks are dropped at close: no owner <-> channel cycle left for a
    full collection (a long-lived master rarely runs one; the soak's RSS grew with kills)."""
    import gc
    import weakref

    class Owner:
        def __init__(self, sock):
            self.channel = Channel(sock)
            self.channel.start(self.on_message, self.on_close)

        def on_message(self, obj):
            pass

        def on_close(self, exc):
            closed.set()

    closed = gevent.event.Event()
    ours, theirs = socket.socketpair()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        owner = Owner(ours)
        refs = [weakref.ref(owner), weakref.ref(owner.channel)]
        theirs.close()  # EOF: the channel closes itself, as when a child dies
        assert closed.wait(10)
        gevent.sleep(0)
        del owner
        assert [r() for r in refs] == [None, None]
    finally:
        if was_enabled:
            gc.enable()


def test_the_encoder_keeps_no_big_buffer_once_the_chunks_are_dropped():
    # A reference cycle in the pickler kept each big payload until a gc pass:
    # malloc could not reuse its memory (16 MiB transfers slowed 1.5-2x).
    gc.disable()
    try:
        chunks, _ = MessageEncoder(1 << 30, None).encode(("big", bytes(BIG)))
        ref = weakref.ref(chunks[-1])   # the payload's memoryview
        del chunks
        assert ref() is None, "the encoder still holds the message's buffers"
    finally:
        gc.enable()
