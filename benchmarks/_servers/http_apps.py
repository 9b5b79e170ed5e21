"""The apps the HTTP benchmark serves: one hello-world response, as WSGI and as ASGI.

Every server answers ``GET /`` with the same 13-byte body and the same two
headers (Content-Type, Content-Length); the servers add their own Date/Server.
"""
from packet_gevent.http import Router

BODY = b"Hello, World!"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]
#: fib(CPU_N) is the CPU-bound route's work: ~5-10 ms of pure Python here.
CPU_N = 21


def hello(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]


async def asgi_hello(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(BODY)).encode())]})
    await send({"type": "http.response.body", "body": BODY})


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def cpu(environ, start_response):
    body = b"%d" % fib(CPU_N)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _router(offloaded: bool) -> Router:
    router = Router()
    router.route("/", hello)
    router.route("/cpu", cpu, offload=offloaded)
    return router


offloaded = _router(True)
inline = _router(False)
