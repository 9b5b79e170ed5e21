"""EventMachine's process tests (the EM.popen / EM.system parts), translated to packet_gevent.

Each test names the EventMachine test it came from (eventmachine/eventmachine,
tests/test_processes.rb; translated, not copied).  ``EM.system(cmd) { |out, status| }`` and
``EM::DeferrableChildProcess.open(cmd)`` have no counterpart of their own here: they are
``reactor.popen(cmd, Handler)`` collecting ``receive_data`` with ``get_status()`` in
``unbind``, which is what they do.  OUR DOCUMENTED BEHAVIOUR DIFFERS from EM.system in one
way: no shell is involved (a string is split with shlex), so a shell command such as
``exit 1`` runs as ``sh -c 'exit 1'``.  ``EM.run`` is an instance reactor here (started,
waited for until a callback stops it).  Real child processes; none is left behind.
"""
import sys

import pytest

from packet_gevent import ProcessFailed, Reactor
from tests.test_peer_eventmachine_reactor import FAIL_SAFE


class Collect:
    """EM.system's block: the program's output and exit status, when it has exited."""

    stdin = ()

    def post_init(self):
        self.out = bytearray()
        for chunk in self.stdin:
            self.send_data(chunk)

    def receive_data(self, data):
        self.out.extend(data)

    def unbind(self, reason=None):
        self.reason = reason
        self.status = self.get_status()
        self.pid = self.get_pid()
        self.reactor.stop()


def system(cmd, stdin=()):
    """``EM.run { EM.system(cmd) { ... EM.stop } }`` on an instance reactor."""
    reactor = Reactor(stop_grace=1.0)
    reactor.start()
    try:
        conn = reactor.popen(cmd, type("System", (Collect,), {"stdin": stdin}))
        assert reactor.wait(FAIL_SAFE), f"{cmd!r} had not ended after {FAIL_SAFE} s"
        return conn
    finally:
        reactor.stop(timeout=1.0)


def test_em_system():
    # test_processes.rb: test_em_system / test_em_system_with_proc /
    # test_deferrable_child_process -- `ls` writes something and exits 0.
    proc = system("ls")
    assert len(proc.out) > 0
    assert proc.status == 0 and proc.reason is None


def test_em_system_bad_exitstatus_and_pid():
    # test_processes.rb: test_em_system_bad_exitstatus / test_em_system_pid -- a non-zero
    # exit is the status (and, ours, unbind(ProcessFailed)); the pid is the child's.
    proc = system(["sh", "-c", "exit 1"])
    assert proc.status == 1
    assert isinstance(proc.reason, ProcessFailed)
    assert proc.pid and proc.pid > 0
    ok = system(["echo", "hi"])
    assert ok.pid and ok.pid != proc.pid and bytes(ok.out) == b"hi\n"


def test_em_system_with_two_procs():
    # test_processes.rb: test_em_system_with_two_procs -- data sent to the program's stdin
    # from the first block: a shell runs "echo hello" then "exit".
    proc = system("sh", stdin=[b"echo hello\n", b"exit\n"])
    assert bytes(proc.out) == b"hello\n"
    assert proc.status == 0


@pytest.mark.parametrize("cmd", [["echo", "1", "2", "version"], "echo 1 2 version"],
                         ids=["list", "string"])
def test_em_system_cmd_arguments(cmd):
    # test_processes.rb: test_em_system_cmd_arguments.
    assert bytes(system(cmd).out) == b"1 2 version\n"


def test_em_system_spaced_arguments():
    # test_processes.rb: test_em_system_spaced_arguments -- an argument with spaces and
    # quotes reaches the program as one (EM: ruby -e 'puts "hello"'; here python -c).
    assert bytes(system([sys.executable, "-c", 'print("hello")']).out) == b"hello\n"
    assert bytes(system(f"""{sys.executable} -c 'print("hello world")'""").out) == b"hello world\n"


def test_em_popen_pause_resume():
    # test_processes.rb: test_em_popen_pause_resume -- a popen handler that pauses in its
    # first receive_data gets no second call (EM pause -> pause_reading).
    calls = []

    class TestClient:
        def receive_data(self, data):
            calls.append(data)
            self.pause_reading()
            self.reactor.add_timer(0.2, self.reactor.stop)

    reactor = Reactor(stop_grace=1.0)
    reactor.start()
    try:
        reactor.popen([sys.executable, "-c",
                       "import sys,time\n"
                       "sys.stdout.write('1\\n'); sys.stdout.flush(); time.sleep(0.05)\n"
                       "sys.stdout.write('2\\n'); sys.stdout.flush()"], TestClient)
        assert reactor.wait(FAIL_SAFE)
    finally:
        reactor.stop(timeout=1.0)
    assert calls == [b"1\n"]
