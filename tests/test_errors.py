"""Errors named for whose fault it is, each raised in its case over real processes and sockets."""
import gevent
import gevent.event
import pytest

import packet_gevent
from packet_gevent import (ChannelBroken, ChannelBusy, ChannelClosed, FrameError, FrameTooLarge,
                           Reactor, WorkerCrashed, WorkerStopped)
from packet_gevent.framing import frame_header
from packet_gevent.ipc.channel import Channel
from packet_gevent.ipc.process import spawn_child

from . import helpers_process as h
from .test_workers import BASIC, wreactor  # noqa: F401  (a fixture)


def test_new_names_are_exported_and_keep_the_old_ones_catching():
    for name in ("WorkerStopped", "ChannelBroken", "ChannelBusy", "FrameTooLarge"):
        assert name in packet_gevent.__all__ and hasattr(packet_gevent, name)
    assert issubclass(WorkerStopped, WorkerCrashed)
    assert issubclass(ChannelBroken, ChannelClosed)
    assert issubclass(FrameTooLarge, FrameError)
    assert issubclass(ChannelBusy, RuntimeError)


# -- workers: stopped by the user vs died ------------------------------------------------

def _ask(reactor, worker, data, key=None):
    result = gevent.event.AsyncResult()
    reactor.ask_worker(worker, data=data, worker_key=key, callback=result.set)
    return result


def test_a_worker_that_dies_fails_its_request_with_worker_crashed_not_stopped(wreactor):
    reply = _ask(wreactor, "echo_worker", ("exit", 7)).get(timeout=10)
    assert reply["type"] == "error"
    assert type(reply["exception"]) is WorkerCrashed and reply["exception"].exitcode == 7


def test_delete_worker_fails_a_request_it_cannot_finish_with_worker_stopped(wreactor, monkeypatch):
    monkeypatch.setattr(wreactor, "stop_grace", 0.3)   # the kill after the STOP's grace
    wreactor.start_worker(worker="echo_worker", worker_key="del")
    pid = _ask(wreactor, "echo_worker", ("pid", None), key="del").get(timeout=10)["data"]
    slow = _ask(wreactor, "echo_worker", ("sleep", 30), key="del")
    wreactor.delete_worker(worker="echo_worker", worker_key="del")
    reply = slow.get(timeout=10)
    assert reply["type"] == "error" and str(pid) in reply["error"]
    assert isinstance(reply["exception"], WorkerStopped)
    assert "deleted by delete_worker" in reply["error"]


def test_reactor_stop_fails_a_pending_request_with_worker_stopped():
    r = Reactor(worker_root=BASIC, stop_grace=0.3)
    r.start()
    try:
        assert _ask(r, "echo_worker", ("echo", 1)).get(timeout=10)["data"] == 1
        slow = _ask(r, "echo_worker", ("sleep", 30))
    finally:
        r.stop(timeout=0.3)
    reply = slow.get(timeout=10)
    assert reply["type"] == "error" and isinstance(reply["exception"], WorkerStopped)


# -- channels: closed here vs broken by the peer; busy; too large ------------------------

def test_send_after_close_here_is_channel_closed_not_broken():
    child = spawn_child(h.echo_blocking)
    channel = Channel(child.sock)
    channel.close()
    with pytest.raises(ChannelClosed) as info:
        channel.send(1)
    assert type(info.value) is ChannelClosed and "this side closed" in str(info.value)
    h.wait_child(child)


def test_send_after_the_peer_went_is_channel_broken():
    child = spawn_child(h.send_then_exit, args=([1],))
    channel = Channel(child.sock)
    closed = gevent.event.AsyncResult()
    got = []
    channel.start(got.append, closed.set)
    assert closed.get(timeout=h.TIMEOUT) is None and got == [1]   # clean EOF: the child exited
    with pytest.raises(ChannelBroken, match="other process"):
        channel.send(2)
    with pytest.raises(ChannelBroken):
        channel.start(got.append, closed.set)
    h.wait_child(child)


def test_a_bad_stream_from_the_peer_breaks_the_channel_with_its_cause():
    child = spawn_child(h.write_raw, args=(b"not a frame header at all",))
    channel = Channel(child.sock)
    closed = gevent.event.AsyncResult()
    channel.start(lambda obj: None, closed.set)
    assert isinstance(closed.get(timeout=h.TIMEOUT), FrameError)
    with pytest.raises(ChannelBroken) as info:
        channel.send(1)
    assert isinstance(info.value.__cause__, FrameError)
    h.wait_child(child)


def test_receiving_two_ways_at_once_is_channel_busy():
    child = spawn_child(h.echo_blocking)
    channel = Channel(child.sock)
    try:
        channel.start(lambda obj: None, lambda exc: None)
        with pytest.raises(ChannelBusy, match="started with callbacks"):
            channel.recv()
        with pytest.raises(ChannelBusy, match="already receiving"):
            channel.start(lambda obj: None, lambda exc: None)
    finally:
        channel.close()
    h.wait_child(child)
    other = spawn_child(h.echo_blocking)
    channel = Channel(other.sock)
    waiting = gevent.spawn(channel.recv, 5)
    gevent.sleep(0)   # let it start waiting: recv is now taken
    try:
        with pytest.raises(ChannelBusy, match="another greenlet"):
            channel.recv(1)
        channel.send("x")
        assert waiting.get(timeout=h.TIMEOUT) == "x"
    finally:
        channel.close()
    h.wait_child(other)


def test_an_oversized_local_send_is_frame_too_large_and_an_oversized_input_frame_error():
    child = spawn_child(h.echo_blocking)
    channel = Channel(child.sock, max_message_size=1000)
    with pytest.raises(FrameTooLarge, match="max_message_size"):
        channel.send(b"x" * 2000)
    channel.send(b"ok")                                       # the stream is unharmed
    assert channel.recv(timeout=h.TIMEOUT) == b"ok"
    channel.close()
    h.wait_child(child)
    child = spawn_child(h.send_then_exit, args=([b"y" * 2000],))
    channel = Channel(child.sock, max_message_size=1000)
    closed = gevent.event.AsyncResult()
    channel.start(lambda obj: None, closed.set)
    reason = closed.get(timeout=h.TIMEOUT)
    assert isinstance(reason, FrameError) and not isinstance(reason, FrameTooLarge)
    h.wait_child(child)
    with pytest.raises(FrameTooLarge, match="split the data"):
        frame_header(20, max_frame_size=10)
