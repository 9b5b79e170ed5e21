"""Workers across process boundaries: the master SIGKILLed, and everything under patch_all().

Each test runs a script in a fresh interpreter (the master) with a timeout;
the scripts print one JSON line the test checks.  The patch_all() scripts call
``gevent.monkey.patch_all()`` before anything else, as applications do.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: A master script starts in ~0.3-0.5 s here (interpreter, gevent, forking the
#: fixture workers); 30 s is for a loaded shared machine.
SCRIPT_TIMEOUT = 30.0


def _env():
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _run(code):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=_env(),
                            capture_output=True, text=True, timeout=SCRIPT_TIMEOUT)
    assert result.returncode == 0, f"script failed ({result.returncode}):\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def _gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie runs no more
    except FileNotFoundError:
        return True


MASTER = """
    {patch}
    import json, sys
    from packet_gevent import Reactor
    from tests.test_workers import BASIC

    def report():
        workers = reactor.workers
        pids = [pid for name, key in workers.running_workers() for pid in workers.pids(name, key)]
        print(json.dumps(pids), flush=True)

    reactor = Reactor(worker_root=BASIC)
    reactor.start()
    report()
    reactor.serve_forever()
"""


@pytest.mark.parametrize("patched", [False, True], ids=["plain", "patch_all"])
def test_workers_die_within_a_second_of_a_sigkilled_master(patched):
    code = textwrap.dedent(MASTER).format(
        patch="from gevent import monkey; monkey.patch_all()" if patched else "")
    master = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = master.stdout.readline()  # the master prints its worker pids once they run
        pids = json.loads(line)
        assert len(pids) == 6, f"expected the 6 fixture worker processes, got {line!r}"
        assert not any(_gone(pid) for pid in pids)
        master.kill()
        master.wait(SCRIPT_TIMEOUT)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and not all(_gone(pid) for pid in pids):
            time.sleep(0.01)
        alive = [pid for pid in pids if not _gone(pid)]
        assert not alive, f"workers {alive} outlived their master by more than 1 s"
    finally:
        if master.poll() is None:
            master.kill()
            master.wait(SCRIPT_TIMEOUT)
        master.stdout.close()
        master.stderr.close()


SCENARIOS = """
    from gevent import monkey; monkey.patch_all()
    import json, os, signal, socket, threading
    import gevent
    assert socket.socket is gevent.socket.socket and threading.Lock is not None
    from packet_gevent import InvalidWorker, Reactor
    from tests.test_workers import AskServer, BASIC, LineClient, ask, proc_gone
    from tests.conftest import wait_for

    results = {}
    reactor = Reactor(worker_root=BASIC, stop_grace=2.0).start()
    server = reactor.start_server("127.0.0.1", 0, AskServer)
    client = LineClient(server)

    # several workers, answered on the asking connection
    client.ask("echo_worker", ["echo", "hi"]); client.ask("double_worker", 21)
    results["several"] = sorted(str(client.line()["data"]) for _ in range(2))
    # worker -> worker
    client.ask("echo_worker", ["forward", 5])
    results["forward"] = client.line()["data"]
    # status and a custom proxy
    ask(reactor, "echo_worker", ("status", "green"))
    results["status"] = reactor.result_hash["echo_worker"]
    client.ask("proxied_worker", "shout")
    results["proxy"] = client.line()["data"]
    # no_auto_load + start_worker with keys + delete_worker
    reactor.start_worker(worker="lazy_worker", worker_key="a", color="red")
    reactor.start_worker(worker="lazy_worker", worker_key="b")
    reply = ask(reactor, "lazy_worker", "x", key="a")["data"]
    results["keyed"] = [reply["key"], reply["options"]["color"]]
    reactor.delete_worker(worker="lazy_worker", worker_key="a")
    try:
        reactor.ask_worker("lazy_worker", data=1, worker_key="a")
        results["deleted"] = "still there"
    except InvalidWorker:
        results["deleted"] = "gone"
    wait_for(lambda: proc_gone(reply["pid"]), message="the deleted worker to exit")
    # SIGKILL with requests in flight: one error each, then the worker is back.
    # Under patch_all, gevent defers os.close: a leaked sibling channel end
    # would hold the EOF back and these replies would never come.
    pid = reactor.workers.pids("echo_worker")[0]
    for _ in range(3):
        client.ask("echo_worker", ["sleep", 30])
    wait_for(lambda: reactor.workers.pending_count() == 3, message="3 requests in flight")
    os.kill(pid, signal.SIGKILL)
    results["killed"] = [client.line()["error"] for _ in range(3)]
    results["killed_pid"] = pid
    wait_for(lambda: reactor.workers.pids("echo_worker") not in ([], [pid]), message="restart")
    client.ask("echo_worker", ["pid", None])
    results["after"] = client.line()["data"] != pid
    client.close()
    reactor.stop(timeout=2.0)
    results["pending"] = reactor.workers.pending_count()
    print(json.dumps(results))
"""


def test_everything_under_patch_all():
    results = _run(SCENARIOS)
    pid = results["killed_pid"]
    assert results["several"] == ["42", "hi"]
    assert results["forward"] == ["doubled", 10]
    assert results["status"] == "green"
    assert results["proxy"] == "SHOUT"
    assert results["keyed"] == ["a", "red"]
    assert results["deleted"] == "gone"
    assert results["killed"] == [f"worker echo_worker (pid {pid}) killed by signal 9 (SIGKILL)"] * 3
    assert results["after"] is True
    assert results["pending"] == 0


def test_eval_server_under_patch_all():
    results = _run("""
        from gevent import monkey; monkey.patch_all()
        import json, socket
        from packet_gevent import Reactor
        from demos.eval_server import EvalServer, WORKER_ROOT

        reactor = Reactor(worker_root=WORKER_ROOT, stop_grace=2.0).start()
        server = reactor.start_server("127.0.0.1", 0, EvalServer, lambda c: c.wow())
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        lines = sock.makefile("rb")
        greeting = lines.readline().decode()
        sock.sendall(b"1+2\\n__import__('os')\\n6*7\\n")
        answers = [lines.readline().decode().strip() for _ in range(3)]
        sock.close()
        reactor.stop(timeout=2.0)
        print(json.dumps({"greeting": greeting, "answers": answers}))
    """)
    assert results["greeting"].startswith("wow: you are client 1")
    assert results["answers"][0] == "= 3"
    assert results["answers"][1].startswith("error: function calls are not allowed")
    assert results["answers"][2] == "= 42"


def test_importing_the_worker_modules_patches_nothing():
    results = _run("""
        import json, os, socket, threading, multiprocessing.popen_fork as pf
        before = (socket.socket, os.close, os.fork, threading.Lock, pf.Popen.poll)
        import packet_gevent.workers.manager, packet_gevent.workers.worker, packet_gevent.workers.pimp
        import demos.eval_server
        after = (socket.socket, os.close, os.fork, threading.Lock, pf.Popen.poll)
        print(json.dumps({"same": before == after}))
    """)
    assert results["same"] is True


def test_stopping_a_master_with_a_signal_leaves_no_worker():
    code = textwrap.dedent("""
        import json
        from packet_gevent import Reactor
        from tests.test_workers import BASIC

        def report(reactor):
            workers = reactor.workers
            pids = [pid for name, key in workers.running_workers() for pid in workers.pids(name, key)]
            print(json.dumps(pids), flush=True)

        Reactor.run(lambda r: r.next_turn(report, r), worker_root=BASIC)
        print("stopped", flush=True)
    """)
    master = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pids = json.loads(master.stdout.readline())
        assert len(pids) == 6
        master.send_signal(signal.SIGTERM)
        assert master.wait(SCRIPT_TIMEOUT) == 0
        assert master.stdout.readline().strip() == "stopped"
        # Stopped and reaped by the master itself before it exited: no zombie left behind.
        assert all(_gone(pid) for pid in pids)
    finally:
        if master.poll() is None:
            master.kill()
            master.wait(SCRIPT_TIMEOUT)
        master.stdout.close()
        master.stderr.close()
