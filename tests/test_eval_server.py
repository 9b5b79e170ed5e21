"""The eval server demo (python -m demos.eval_server), driven by a plain TCP client."""
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Start-up to the "listening" line: ~0.3 s here (imports + forking 2 workers);
#: generous for a loaded shared machine.
START_TIMEOUT = 20.0


def read_line(stream, timeout):
    """One line from a pipe, or AssertionError after ``timeout`` seconds."""
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    try:
        assert selector.select(timeout), f"no line within {timeout} s"
        return stream.readline().decode()
    finally:
        selector.close()


def children_of(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def eval_server():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "demos.eval_server", "--host", "127.0.0.1",
                             "--port", "0", "--log-level", "WARNING"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = read_line(proc.stdout, START_TIMEOUT)
        assert line.startswith("eval server listening on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()


class Client:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")

    def send(self, text):
        self.sock.sendall(text.encode())

    def line(self):
        line = self.file.readline()
        assert line.endswith(b"\n"), f"connection closed or timed out: {line!r}"
        return line.decode().rstrip("\n")

    def ask(self, expression):
        self.send(expression + "\n")
        return self.line()

    def close(self):
        self.file.close()
        self.sock.close()


def test_evaluates_lines_and_refuses_code(eval_server):
    proc, port = eval_server
    client = Client(port)
    try:
        assert client.line().startswith("wow: you are client ")  # the per-instance block
        assert client.ask("1 + 2") == "= 3"
        assert client.ask("2 * (3 + 4) ** 2") == "= 98"
        assert client.ask("7 / 2") == "= 3.5"
        assert client.ask("__import__('os').system('echo pwned')") == \
            "error: function calls are not allowed (only numbers, + - * / // % ** and parentheses)"
        assert client.ask("open('/etc/passwd').read()").startswith("error: ")
        assert client.ask("().__class__") .startswith("error: ")
        assert client.ask("1/0") == "error: division by zero"
        assert client.ask("9 ** 9 ** 9") .startswith("error: exponent too large")
        assert client.ask("1 +") .startswith("error: syntax error")
        assert client.ask("6 * 7") == "= 42"  # still usable after errors
    finally:
        client.close()


def test_pipelined_lines_come_back_in_order_for_each_client(eval_server):
    proc, port = eval_server
    first, second = Client(port), Client(port)
    try:
        greetings = {first.line(), second.line()}
        assert len(greetings) == 2  # each client got its own number
        first.send("".join(f"{i} * 2\n" for i in range(100)))
        second.send("".join(f"{i} + 1000\n" for i in range(100)))
        assert [first.line() for _ in range(100)] == [f"= {i * 2}" for i in range(100)]
        assert [second.line() for _ in range(100)] == [f"= {i + 1000}" for i in range(100)]
    finally:
        first.close()
        second.close()


def test_a_killed_eval_worker_is_replaced(eval_server):
    proc, port = eval_server
    workers = children_of(proc.pid)
    assert len(workers) == 2  # pool_size = 2
    client = Client(port)
    try:
        client.line()
        os.kill(workers[0], signal.SIGKILL)
        wait_until(lambda: len(set(children_of(proc.pid)) - set(workers)) == 1, 5,
                   "a replacement worker")
        assert workers[0] not in children_of(proc.pid)  # reaped: no zombie
        answers = [client.ask(f"{i} + 1") for i in range(20)]
        assert answers == [f"= {i + 1}" for i in range(20)]
    finally:
        client.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_server_and_workers_cleanly(eval_server, signum):
    proc, port = eval_server
    workers = children_of(proc.pid)
    client = Client(port)
    try:
        client.line()
        assert client.ask("2 + 2") == "= 4"
        proc.send_signal(signum)
        assert proc.wait(15) == 0
        assert client.file.readline() == b""  # the server closed the connection
    finally:
        client.close()
    wait_until(lambda: all(gone(pid) for pid in workers), 2, "the workers to exit")
    assert b"Traceback" not in proc.stderr.read()


def test_oversized_line_gets_an_error_and_only_that_connection_closes():
    from tests.test_demos import start_demo
    import socket
    proc, host, port = start_demo("demos.eval_server", "--log-level", "WARNING")
    try:
        bad = socket.create_connection((host, port), timeout=10)
        good = socket.create_connection((host, port), timeout=10)
        bad_file, good_file = bad.makefile("rb"), good.makefile("rb")
        assert bad_file.readline().startswith(b"wow")
        assert good_file.readline().startswith(b"wow")
        bad.sendall(b"1+1\n" + b"9" * 10000)  # a line that never ends
        assert bad_file.readline() == b"= 2\n"  # what it asked before is answered
        assert b"longer than" in bad_file.readline()
        assert bad_file.readline() == b""  # then closed
        good.sendall(b"6*7\n")
        assert good_file.readline() == b"= 42\n"
    finally:
        proc.terminate()
        proc.wait(10)
