"""What a new user meets in the demos: usage lines, help texts, quiet stops, no stray warnings."""
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from tests.conftest import ROOT
from tests.test_demos import start_demo

ENV = dict(os.environ, PYTHONPATH=ROOT)


def _run(*args, timeout=60):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("module", ["demos.echo_server", "demos.eval_server", "demos.http_client",
                                    "demos.threadpool_swap", "demos.safe_eval"])
def test_usage_line_shows_the_python_m_command(module):
    result = _run("-m", module, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m {module} "), result.stdout[:200]


def test_http_client_host_and_port_help_say_what_they_are_for():
    text = _run("-m", "demos.http_client", "--help").stdout
    assert "address to bind" not in text
    assert "local demo page" in text


def test_safe_eval_runs_from_the_command_line():
    result = _run("-m", "demos.safe_eval", "1+2*3", "__import__('os')")
    assert result.stdout == "= 7\n"
    assert result.returncode == 1 and "function calls are not allowed" in result.stderr


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_threadpool_swap_serve_stops_quietly(signame):
    proc, host, port = start_demo("demos.threadpool_swap", "--serve", "--pool", "fork",
                                  "--work-ms", "1")
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/heavy", timeout=20) as response:
            assert response.read().strip().isdigit()
        proc.send_signal(getattr(signal, signame))
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_threadpool_swap_listener_gives_accepted_sockets_tcp_nodelay():
    from demos.threadpool_swap import listener
    server = listener("127.0.0.1", 0)
    try:
        with socket.create_connection(server.getsockname(), timeout=10):
            accepted, _ = server.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        server.close()


def test_threadpool_swap_run_shows_no_resource_warning():
    result = _run("-W", "default", "-m", "demos.threadpool_swap", "--pool", "fork", "--seconds",
                  "0.5", "--work-ms", "2", "--heavy-clients", "1", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ResourceWarning" not in result.stderr, result.stderr


def test_the_deliberate_segfault_task_prints_no_fatal_error_even_with_faulthandler_on():
    # pytest enables faulthandler, which the pool process inherits: a passing run printed
    # "Fatal Python error: Segmentation fault" past output capture.
    result = _run("-X", "faulthandler", "-c", """if True:
        import signal
        from packet_gevent import ForkPool
        from tests.test_pool_faults import segfault
        pool = ForkPool(1)
        exc = pool.submit(segfault).exception(timeout=30)
        pool.shutdown(wait=True, timeout=10)
        print(exc.signal == signal.SIGSEGV)
        """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
    assert "Fatal Python error" not in result.stderr, result.stderr


def _dev_py(*args, **popen):
    # This interpreter's own venv (sys.prefix), already installed: dev.py only execs.
    env = dict(ENV, PACKET_GEVENT_PYTHON=sys.executable, PACKET_GEVENT_VENV=sys.prefix)
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "dev.py"), *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)


def test_dev_py_becomes_the_command_so_signals_and_exit_status_are_its_own():
    code = ("import os, signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))\n"
            "print(os.getpid(), flush=True)\n"
            "time.sleep(30)\n")
    proc = _dev_py("python", "-c", code)
    try:
        line = proc.stdout.readline()
        assert line.strip() == str(proc.pid), (line, proc.stderr.read() if not line else "")
        proc.send_signal(signal.SIGTERM)     # `kill <dev.py pid>` reaches the command itself
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 3, err
    status = _dev_py("python", "-c", "raise SystemExit(7)")
    status.communicate(timeout=60)
    assert status.returncode == 7
