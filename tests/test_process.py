"""Tests for packet_gevent.ipc.process: real forks, real socketpairs, each hazard of forking
under gevent that its docstring lists and a test can show, also under gevent.monkey.patch_all()."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import gevent

from packet_gevent.ipc import process
from packet_gevent.ipc.process import live_children, spawn_child

from . import helpers_process as h
from .conftest import ROOT, run_script


def test_exit_codes_signals_and_descriptions():
    h.scenario_exit_codes()


def test_exception_in_target_prints_traceback_and_exits_1(capfd):
    def boom(sock):
        raise KeyError("missing-thing")

    child = spawn_child(boom)
    h.wait_child(child)
    assert child.exitcode == 1
    err = capfd.readouterr().err
    assert "Traceback" in err and "KeyError: 'missing-thing'" in err


def test_wait_blocks_only_the_calling_greenlet():
    h.scenario_wait_is_cooperative()


def test_wait_timeout_returns_false_and_child_keeps_running():
    child = spawn_child(h.wait_for_eof)
    assert child.wait(0.01) is False and child.alive
    child.sock.close()
    h.wait_child(child)
    assert child.exitcode == 0 and not child.alive


def test_child_gets_its_own_working_threadpool():
    h.scenario_child_gets_a_working_threadpool()


def test_no_zombies_after_exits():
    h.scenario_no_zombies()


def test_parent_greenlets_timers_and_signal_handlers_never_run_in_child(tmp_path):
    h.scenario_parent_greenlets_never_run_in_child(str(tmp_path / "marker"))


def test_listening_server_is_not_inherited():
    h.scenario_server_not_inherited()


def test_siblings_do_not_hold_each_others_ends():
    h.scenario_siblings()


def test_other_codes_children_are_not_reaped_by_us():
    h.scenario_foreign_children_untouched()


def test_on_exit_runs_once_in_the_hub_even_when_registered_late():
    child = spawn_child(lambda sock: 3)
    calls = []
    hub = gevent.get_hub()
    child.on_exit(lambda c: calls.append(("early", c.exitcode, gevent.getcurrent() is hub)))
    h.wait_child(child)
    child.on_exit(lambda c: calls.append(("late", c.exitcode, gevent.getcurrent() is hub)))
    gevent.sleep(0)
    assert calls == [("early", 3, True), ("late", 3, True)]


def test_a_raising_on_exit_callback_does_not_stop_the_others(caplog):
    child = spawn_child(lambda sock: 0)
    calls = []
    child.on_exit(lambda c: 1 / 0)
    child.on_exit(calls.append)
    h.wait_child(child)
    child.sock.close()
    assert calls == [child]
    assert "on_exit callback" in caplog.text


def test_terminate_sends_sigterm_then_sigkill_after_grace():
    polite = spawn_child(h.wait_for_eof)
    polite.terminate(grace=h.TIMEOUT)
    assert polite.signal == signal.SIGTERM

    def stubborn(sock):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sock.sendall(b"r")
        time.sleep(60)

    child = spawn_child(stubborn)
    child.sock.setblocking(True)
    assert child.sock.recv(1) == b"r"
    child.terminate(grace=0.05)
    assert child.signal == signal.SIGKILL and not child.alive
    child.kill()  # reaped: a no-op, never a recycled pid


def test_sigint_is_ignored_by_children_unless_asked():
    def wait_ready(sock):
        sock.sendall(b"r")
        return 0 if sock.recv(1) == b"x" else 9

    for ignore, expected in ((True, (0, None)), (False, (None, signal.SIGINT))):
        child = spawn_child(wait_ready, ignore_sigint=ignore)
        child.sock.setblocking(True)
        assert child.sock.recv(1) == b"r"
        os.kill(child.pid, signal.SIGINT)
        if ignore:
            child.sock.sendall(b"x")
        h.wait_child(child)
        assert (child.exitcode, child.signal) == expected


def test_python_signal_handlers_reset_and_ignored_signals_kept():
    ran = []
    old_usr2 = signal.signal(signal.SIGUSR2, lambda *a: ran.append(os.getpid()))
    old_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        child = spawn_child(h.ready_then_wait_for_eof)
        h.wait_ready(child)
        os.kill(child.pid, signal.SIGHUP)   # still ignored: the child lives on
        os.kill(child.pid, signal.SIGUSR2)  # default action now: it dies of it
        h.wait_child(child)
    finally:
        signal.signal(signal.SIGUSR2, old_usr2)
        signal.signal(signal.SIGHUP, old_hup)
    assert child.signal == signal.SIGUSR2 and ran == []


def test_polling_reaper_when_pidfd_is_unavailable(monkeypatch):
    monkeypatch.setattr(process, "_use_pidfd", False)
    child = spawn_child(lambda sock: 3)
    assert child._pidfd is None
    h.wait_child(child)
    assert child.exitcode == 3
    h.assert_reaped(child.pid)


def test_keep_fds_and_release_of_other_pipes():
    kept_r, kept_w = os.pipe()
    other_r, other_w = os.pipe()

    def target(sock):
        try:
            os.fstat(other_w)
            held_other = os.readlink(f"/proc/self/fd/{other_w}").startswith("pipe:")
        except OSError:
            held_other = False
        os.write(kept_w, b"k")
        return 5 if held_other else 0

    child = spawn_child(target, keep_fds=[kept_w])
    h.wait_child(child)
    assert child.exitcode == 0
    assert os.read(kept_r, 1) == b"k"
    for fd in (kept_r, kept_w, other_r, other_w):
        os.close(fd)


def test_children_start_with_an_empty_registry():
    first = spawn_child(h.wait_for_eof)

    def target(sock):
        return len(live_children())

    child = spawn_child(target)
    h.wait_child(child)
    assert child.exitcode == 0 and first in live_children()
    first.kill()
    h.wait_child(first)


def test_spawn_from_a_native_thread_is_refused():
    errors = []
    thread = threading.Thread(target=lambda: _try_spawn(errors))
    thread.start()
    thread.join(h.TIMEOUT)
    assert errors and "main thread" in str(errors[0])


def _try_spawn(errors):
    try:
        spawn_child(lambda sock: 0)
    except RuntimeError as exc:
        errors.append(exc)


# -- in fresh interpreters --------------------------------------------------------

def _check(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_everything_also_under_patch_all(tmp_path):
    out = _check(run_script(f"""
        from gevent import monkey; monkey.patch_all()
        from tests import helpers_process as h
        h.run_all_scenarios({str(tmp_path)!r})
        print("ALL OK")
        """, timeout=60))
    assert out.strip().endswith("ALL OK")


def test_exit_status_kept_when_libev_reaps_children():
    # gevent.subprocess installs libev's SIGCHLD handler, which reaps every
    # child with waitpid(-1); children started after that use a libev child
    # watcher, so their status still arrives.
    out = _check(run_script("""
        import signal
        import gevent.subprocess
        from packet_gevent.ipc import process
        from tests import helpers_process as h
        assert not process._libev_reaps_children()
        early = process.spawn_child(h.wait_for_eof)
        assert gevent.subprocess.call(["true"]) == 0
        assert process._libev_reaps_children()
        child = process.spawn_child(lambda sock: 5)
        h.wait_child(child)
        killed = process.spawn_child(h.wait_for_eof)
        killed.kill()
        h.wait_child(killed)
        early.sock.close()
        h.wait_child(early)   # started before: status may be lost, but no hang
        print(child.exitcode, int(killed.signal), early.exitcode in (0, None))
        """))
    # int(): str(signal.SIGKILL) is "Signals.SIGKILL" before Python 3.11, "9" after.
    assert out.split() == ["5", str(int(signal.SIGKILL)), "True"]


def test_importing_patches_nothing_global():
    out = _check(run_script("""
        import os, signal, socket
        import multiprocessing.popen_fork as pf
        before = (pf.Popen.poll, os.fork, os.close, os.waitpid, signal.signal, socket.socket)
        import packet_gevent.ipc.process, packet_gevent.ipc.channel
        after = (pf.Popen.poll, os.fork, os.close, os.waitpid, signal.signal, socket.socket)
        print(all(a is b for a, b in zip(before, after)))
        """))
    assert out.strip() == "True"


def test_buffered_stdout_is_not_written_twice():
    out = _check(run_script("""
        import sys
        from packet_gevent.ipc.process import spawn_child
        print("before")          # stdout is a pipe: block-buffered, not yet written
        child = spawn_child(lambda sock: print("child", flush=True))
        child.wait(10)
        """))
    assert out == "before\nchild\n"


def test_atexit_kills_and_reaps_live_children():
    out = _check(run_script("""
        from packet_gevent.ipc.process import spawn_child
        from tests import helpers_process as h
        child = spawn_child(h.wait_for_eof)
        print(child.pid, flush=True)
        child.sock.detach()   # keep its end open: only atexit can end the child
        """))
    pid = int(out)
    assert h.process_state(pid) is None


def test_children_die_within_a_second_when_the_master_is_killed():
    script = textwrap.dedent("""
        import time
        from packet_gevent.ipc.process import spawn_child
        children = [spawn_child(lambda sock: time.sleep(60)) for _ in range(2)]
        print(*[c.pid for c in children], flush=True)
        time.sleep(60)
        """)
    env = dict(os.environ, PYTHONPATH=ROOT)
    master = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in master.stdout.readline().split()]
        assert len(pids) == 2 and all(h.process_state(p) for p in pids)
    finally:
        master.kill()
        master.wait(h.TIMEOUT)
        master.stdout.close()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if all(h.process_state(p) in (None, "Z") for p in pids):  # gone, or dead awaiting init
            break
        time.sleep(0.005)
    assert all(h.process_state(p) in (None, "Z") for p in pids), \
        [(p, h.process_state(p)) for p in pids]
