"""``python -m demos.wsgi_app`` as a user runs it."""
import http.client
import json
import signal

from tests.test_demos import start_demo


def get(host, port, path):
    conn = http.client.HTTPConnection(host, port, timeout=20)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_wsgi_app_demo_serves_both_routes_and_stops_on_sigterm():
    proc, host, port = start_demo("demos.wsgi_app", "--offload-processes", "1")
    try:
        assert get(host, port, "/") == (200, b"Hello, World!\n")
        status, body = get(host, port, "/cpu?n=20")
        answer = json.loads(body)
        assert status == 200 and answer["fib"] == 6765
        assert answer["pid"] != proc.pid  # computed in the fork pool
        assert get(host, port, "/nope")[0] == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()
        proc.stderr.close()
