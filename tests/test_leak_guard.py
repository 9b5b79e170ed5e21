"""The autouse leak guard of tests/conftest.py sees what it must (a real socket, a real child)."""
import socket
import subprocess

from tests.conftest import _leaks, child_pids, open_fds


def test_the_guard_sees_a_new_descriptor_and_a_new_child_and_their_going():
    fds, children = open_fds(), child_pids()
    a, b = socket.socketpair()
    proc = subprocess.Popen(["sleep", "30"])
    try:
        leaked_fds, leaked_children = _leaks(fds, children)
        assert {a.fileno(), b.fileno()} <= set(leaked_fds) and proc.pid in leaked_children
        assert leaked_fds[a.fileno()].startswith("socket:")
    finally:
        a.close()
        b.close()
        proc.kill()
        proc.wait(10)
    assert _leaks(fds, children) == ({}, set())
