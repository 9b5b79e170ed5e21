"""SerialRunner: posted calls run in order, in one long-lived greenlet, never in the hub."""
import logging

import gevent
import gevent.event
import greenlet

from packet_gevent.runner import SerialRunner


def _post_from_hub(runner, fn, *args):
    """Post from a hub callback (the path the master's channel callbacks take)."""
    done = gevent.event.Event()

    def in_hub():
        runner.post(fn, *args)
        done.set()
    gevent.get_hub().loop.run_callback(in_hub)
    assert done.wait(5)


def test_calls_run_in_post_order_in_one_greenlet_that_is_not_the_hub():
    runner = SerialRunner("test call")
    seen = []
    finished = gevent.event.Event()
    for i in range(5):
        runner.post(lambda i=i: seen.append((i, greenlet.getcurrent())))
    _post_from_hub(runner, lambda: seen.append((5, greenlet.getcurrent())))
    runner.post(finished.set)
    assert finished.wait(5)
    assert [i for i, _ in seen] == list(range(6))
    glets = {glet for _, glet in seen}
    assert len(glets) == 1 and glets != {gevent.get_hub()}
    assert not runner.busy


def test_a_post_from_the_hub_to_an_idle_runner_runs_at_once():
    runner = SerialRunner("test call")
    seen = []
    done = gevent.event.Event()

    def in_hub():
        runner.post(seen.append, "ran")
        seen.append("post returned")
        done.set()
    gevent.get_hub().loop.run_callback(in_hub)
    assert done.wait(5)
    assert seen == ["ran", "post returned"]


def test_a_blocking_call_holds_back_later_calls_but_not_the_hub():
    runner = SerialRunner("test call")
    release = gevent.event.Event()
    order = []
    finished = gevent.event.Event()
    _post_from_hub(runner, lambda: (order.append("first"), release.wait(5), order.append("first done")))
    _post_from_hub(runner, order.append, "second")
    assert order == ["first"] and runner.busy
    other = gevent.event.Event()
    gevent.spawn(other.set)
    assert other.wait(5)  # the hub runs other greenlets meanwhile
    assert order == ["first"]
    release.set()
    runner.post(finished.set)
    assert finished.wait(5)
    assert order == ["first", "first done", "second"]


def test_a_call_that_raises_is_logged_and_the_runner_goes_on(caplog):
    runner = SerialRunner("test call")
    finished = gevent.event.Event()

    def boom():
        raise ValueError("boom")
    with caplog.at_level(logging.ERROR, logger="packet_gevent.runner"):
        runner.post(boom)
        runner.post(finished.set)
        assert finished.wait(5)
    assert "test call" in caplog.text and "ValueError: boom" in caplog.text


def test_a_call_raising_system_exit_reaches_the_hub_and_a_fresh_greenlet_takes_over(monkeypatch):
    hub = gevent.get_hub()
    reported = []
    monkeypatch.setattr(hub, "handle_system_error", lambda *exc_info: reported.append(exc_info[0]),
                        raising=False)
    runner = SerialRunner("test call")
    first = runner.greenlet
    finished = gevent.event.Event()

    def leave():
        raise SystemExit(3)
    runner.post(leave)
    runner.post(finished.set)
    assert finished.wait(5)
    assert first.dead and runner.greenlet is not first
    assert reported == [SystemExit]


def test_without_hold_back_a_blocked_call_can_wait_for_a_call_queued_behind_it():
    runner = SerialRunner("test call", hold_back=False)
    later_ran = gevent.event.Event()
    done = gevent.event.Event()
    order = []

    def first():
        order.append("first waits")
        assert later_ran.wait(5), "the call queued behind a blocked one never ran"
        order.append("first done")
        done.set()

    def post_both():  # queued together, before the runner wakes
        runner.post(first)
        runner.post(lambda: (order.append("second"), later_ran.set()))
    gevent.spawn(post_both).join(5)
    assert done.wait(5)
    assert order == ["first waits", "second", "first done"]


def test_without_hold_back_a_call_posted_while_one_blocks_runs_meanwhile():
    runner = SerialRunner("test call", hold_back=False)
    release = gevent.event.Event()
    order = []
    _post_from_hub(runner, lambda: (order.append("blocked"), release.wait(5), order.append("released")))
    _post_from_hub(runner, order.append, "meanwhile")
    assert order == ["blocked", "meanwhile"]
    release.set()
    finished = gevent.event.Event()
    runner.post(finished.set)
    assert finished.wait(5)
    assert order == ["blocked", "meanwhile", "released"]
    # Non-blocking calls still run in post order in one greenlet.
    seen = []
    done = gevent.event.Event()
    for i in range(5):
        runner.post(lambda i=i: seen.append((i, greenlet.getcurrent())))
    runner.post(done.set)
    assert done.wait(5)
    assert [i for i, _ in seen] == list(range(5)) and len({g for _, g in seen}) == 1
