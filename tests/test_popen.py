"""Reactor.popen (EventMachine's EM.popen): a child program's stdin/stdout as a connection."""
import os
import signal
import sys

import gevent
import gevent.event
import gevent.queue
import pytest

from packet_gevent import Connection, LineConnection, PopenConnection, ProcessFailed
from tests.conftest import alive


class Collect(Connection):
    def __init__(self):
        self.output = []
        self.unbound = gevent.event.AsyncResult()

    def receive_data(self, data):
        self.output.append(data)

    def unbind(self, reason=None):
        self.unbound.set((reason, self.get_status()))


def test_input_output_and_exit_status_through_cat(reactor):
    conn = reactor.popen(["cat"], Collect)
    pid = conn.get_pid()
    conn.send_data(b"hello\n" * 50000)  # 300 kB: more than the socket buffers hold
    conn.close_write()  # cat sees EOF on stdin, writes the rest, exits 0
    reason, status = conn.unbound.get(timeout=10)
    assert (reason, status) == (None, 0)
    assert b"".join(conn.output) == b"hello\n" * 50000
    assert not alive(pid)  # reaped: no zombie


def test_a_nonzero_exit_or_a_missing_program_is_a_process_failed(reactor):
    conn = reactor.popen([sys.executable, "-c", "import sys; sys.stdout.write('out'); sys.exit(3)"], Collect)
    reason, status = conn.unbound.get(timeout=10)
    assert b"".join(conn.output) == b"out"
    assert isinstance(reason, ProcessFailed) and reason.exitcode == 3 and status == 3
    assert "exited with code 3" in str(reason)

    missing = reactor.popen("no-such-program-here --flag", Collect)
    reason, status = missing.unbound.get(timeout=10)
    assert isinstance(reason, ProcessFailed) and status == 127

    with pytest.raises(ValueError, match="run_in_hub"):
        reactor.popen(["true"], type("InHub", (Collect,), {"run_in_hub": True}))


def test_lines_from_a_program_and_a_plain_class_handler(reactor):
    lines = gevent.queue.Queue()

    class Lines(LineConnection):
        def receive_line(self, line):
            lines.put(line)

    reactor.popen("printf 'one\\ntwo\\n'", Lines)
    assert [lines.get(timeout=10), lines.get(timeout=10)] == [b"one", b"two"]

    done = gevent.event.AsyncResult()

    class Plain:  # a Packet user's plain class is mixed in
        def receive_data(self, data):
            done.set(data)

    conn = reactor.popen(["echo", "plain"], Plain)
    assert done.get(timeout=10) == b"plain\n"
    assert isinstance(conn, PopenConnection)


def test_close_connection_of_a_program_that_runs_on_ends_it_with_sigterm(reactor):
    class Quick(Collect):
        popen_exit_grace = 0.1

    conn = reactor.popen(["sleep", "30"], Quick)  # never reads stdin, never closes stdout
    pid = conn.get_pid()
    assert alive(pid)
    conn.close_connection()
    reason, status = conn.unbound.get(timeout=10)
    assert status == -signal.SIGTERM and reason.signal == signal.SIGTERM
    assert not alive(pid)


def test_reactor_stop_ends_its_programs_and_leaves_no_child():
    from packet_gevent import Reactor
    r = Reactor(stop_grace=1.0)
    r.start()
    conns = [r.popen(["sleep", "30"], Collect) for _ in range(2)]
    pids = [conn.get_pid() for conn in conns]
    r.stop(timeout=1.0)
    for conn in conns:
        reason, status = conn.unbound.get(timeout=5)
        assert status == -signal.SIGTERM
    assert not any(alive(pid) for pid in pids)
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _is_child_zombie(int(p))]


def _is_child_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().split(")")[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] == "Z" and int(fields[1]) == os.getpid()


def test_system_feeds_the_input_and_answers_the_whole_output_and_status(reactor):
    # EventMachine's EM.system(cmd) { |output, status| }: here an AsyncResult, and a callback.
    seen = []
    answer = reactor.system(["sort", "-n"], input=b"10\n9\n100\n" * 20000,
                            callback=lambda output, status: seen.append((len(output), status)))
    output, status = answer.get(timeout=10)
    assert status == 0 and output == b"9\n" * 20000 + b"10\n" * 20000 + b"100\n" * 20000
    assert seen == [(len(output), 0)]  # the callback ran, before the answer was set


def test_system_reports_a_failure_in_the_status_not_as_an_exception(reactor):
    output, status = reactor.system([sys.executable, "-c",
                                     "import sys; print(sys.stdin.read() == ''); sys.exit(5)"]).get(timeout=10)
    assert (output, status) == (b"True\n", 5)  # no input: stdin is at EOF at once, never waited on
    assert reactor.system("no-such-program-here").get(timeout=10) == (b"", 127)
    killed = reactor.system([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert killed.get(timeout=10) == (b"", -signal.SIGKILL)
    with pytest.raises(TypeError, match="input must be bytes"):
        reactor.system(["cat"], input="text")
