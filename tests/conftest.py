"""Shared fixtures: a started reactor, loopback clients, subprocess scripts, and the leak guard."""
import os
import subprocess
import sys
import textwrap
import time

import gevent
import gevent.socket
import pytest

from packet_gevent import Reactor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: How long a test's teardown may take to give back its descriptors and
#: children (a SIGKILLed child is reaped 1-2 ms after the kill; an exit
#: noticed by EOF and pidfd within a few ms).  The guard re-checks
#: cooperatively, so the hub runs the callbacks that close and reap.
LEAK_SETTLE = 2.0


# -- the leak guard ----------------------------------------------------------------------------

def open_fds():
    """{fd: what it points at} for this process (the listing's own fd is left out)."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the directory listing's own descriptor, closed by now
            pass
    return fds


def child_pids():
    """Pids of this process's children, zombies (not yet reaped) included."""
    me, found = str(os.getpid()), set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    if fh.read().rsplit(")", 1)[1].split()[1] == me:
                        found.add(int(name))
            except (OSError, IndexError):
                pass
    return found


def _leaks(fds_before, children_before):
    fds = {fd: target for fd, target in open_fds().items() if fds_before.get(fd) != target}
    children = child_pids() - children_before
    return fds, children


def _describe_child(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return f"{pid} (gone)"
    return f"{pid} state {state}: {cmd or '?'}"


@pytest.fixture(autouse=True)
def no_leaks(request):
    """Fail a test that leaves a file descriptor or a child process behind.

    Compares /proc/self/fd and this process's children (from /proc) before
    and after the test and its function-scoped fixtures; a difference gets
    LEAK_SETTLE seconds of cooperative waiting to go away.  Fixtures of a
    wider scope (a module's pool) are set up before and torn down after.
    A module whose shared fixture opens descriptors on demand (a Dask
    client's connection pool) sets ``pytestmark = pytest.mark.fds_owned_by_module``:
    only child processes are checked per test there, and the module's own
    teardown must check its descriptors.
    """
    gevent.get_hub()  # the hub's own descriptors exist before the snapshot
    check_fds = request.node.get_closest_marker("fds_owned_by_module") is None
    fds_before, children_before = open_fds(), child_pids()
    yield
    fds, children = _leaks(fds_before, children_before)
    if not check_fds:
        fds = {}
    deadline = time.monotonic() + LEAK_SETTLE
    while (fds or children) and time.monotonic() < deadline:
        gevent.sleep(0.005)
        fds, children = _leaks(fds_before, children_before)
        if not check_fds:
            fds = {}
    problems = []
    if fds:
        problems.append("file descriptors left open: " +
                        ", ".join(f"{fd} -> {target}" for fd, target in sorted(fds.items())))
    if children:
        problems.append("child processes left behind: " +
                        "; ".join(_describe_child(pid) for pid in sorted(children)))
    if problems:
        pytest.fail(f"{request.node.nodeid} leaked ({LEAK_SETTLE} s after its end): " +
                    " / ".join(problems), pytrace=False)


@pytest.fixture
def reactor():
    r = Reactor(stop_grace=2.0)
    r.start()
    try:
        yield r
    finally:
        r.stop(timeout=2.0)


def client(server, timeout=10.0):
    """A gevent (cooperative) client socket connected to ``server``."""
    sock = gevent.socket.create_connection((server.host, server.port), timeout=timeout)
    return sock


def recv_exactly(sock, n, timeout=10.0):
    chunks = []
    got = 0
    with gevent.Timeout(timeout, AssertionError(f"received {got} of {n} bytes before timeout")):
        while got < n:
            chunk = sock.recv(min(65536, n - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    return b"".join(chunks)


def recv_until_closed(sock, timeout=10.0):
    chunks = []
    with gevent.Timeout(timeout, AssertionError("peer did not close before timeout")):
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def wait_for(predicate, timeout=5.0, message="condition"):
    """Wait cooperatively for ``predicate()``; fail with ``message`` after ``timeout``.

    Used only where no event exists to wait on (e.g. state in another process).
    """
    with gevent.Timeout(timeout, AssertionError(f"timed out waiting for {message}")):
        while not predicate():
            gevent.sleep(0.002)


def run_script(code, timeout=30.0, env=None):
    """Run ``code`` in a fresh interpreter (cwd = project root); return CompletedProcess."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def alive(pid):
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def assert_gone(pids, timeout=5.0):
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout,
             f"pool processes {pids} to exit")


@pytest.fixture
def pool():
    """A ForkPool of 2; at teardown it is shut down and its processes must be gone."""
    from packet_gevent import ForkPool
    p = ForkPool(2)
    try:
        yield p
    finally:
        pids = p.pids()
        p.shutdown(wait=True, timeout=5)
        assert_gone(pids)


# -- TLS: one throw-away certificate for every TLS test ----------------------------------------

@pytest.fixture(scope="session")
def certificate(tmp_path_factory):
    """A self-signed certificate for localhost, 127.0.0.1 and ::1: (cert path, key path, cert PEM)."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"],
                   check=True, capture_output=True, timeout=30)
    with open(cert) as fh:
        return cert, key, fh.read()


@pytest.fixture
def tls_contexts(certificate):
    """Fresh (server context, client context) for ``certificate`` (tests may change them)."""
    import ssl
    cert, key, _ = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=cert)
    return server_ctx, client_ctx


def receive_all_over_tls(reactor, tls_contexts, sender, timeout=10.0):
    """Serve ``sender`` (a Connection class) over TLS; the bytes a client got from it before unbind."""
    import gevent.event
    from packet_gevent import Connection
    server_ctx, client_ctx = tls_contexts
    received = []
    done = gevent.event.Event()

    class Reader(Connection):
        def receive_data(self, data):
            received.append(data)

        def unbind(self, reason=None):
            done.set()

    server = reactor.start_server("127.0.0.1", 0, sender, ssl_context=server_ctx)
    reactor.connect("127.0.0.1", server.port, Reader, ssl_context=client_ctx, server_hostname="localhost")
    assert done.wait(timeout), "the TLS client was not unbound in time"
    return b"".join(received)
