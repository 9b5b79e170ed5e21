"""WSGI apps for the HTTP tests, importable by pool and serving processes."""
import logging
import os
import time
from urllib.parse import parse_qs

from packet_gevent.http import Router, offload


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Pid", str(os.getpid()))])
    return [b"Hello, World!"]


def slow(environ, start_response):
    """Blocks its whole process for a while (unpatched time.sleep): CPU-bound work's stand-in.

    ``?t=SECONDS&mark=PATH``: PATH is created as the work starts (a sign another
    process can see, even while this one is blocked).
    """
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if "mark" in query:
        open(query["mark"][0], "w").close()
    time.sleep(float(query.get("t", ["0.5"])[0]))
    start_response("200 OK", [("X-Pid", str(os.getpid()))])
    return [b"slow done"]


def gentle(environ, start_response):
    """Waits cooperatively (gevent.sleep): a request in flight for the drain tests."""
    import gevent
    logging.getLogger("tests.http_apps").info("gentle start")
    gevent.sleep(float(environ.get("QUERY_STRING") or 0.3))
    start_response("200 OK", [("X-Pid", str(os.getpid()))])
    return [b"gentle done"]


@offload
def offloaded_echo(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("201 Created", [("X-Pid", str(os.getpid()))])
    return [b"echo:", body, environ["PATH_INFO"].encode()]


router = Router()
router.route("/", hello)
router.route("/slow", slow, offload=True)
router.route("/gentle", gentle)
router.route("/echo", offloaded_echo)

inline_router = Router()
inline_router.route("/", hello)
inline_router.route("/slow", slow)


def fails(environ, start_response):
    if environ["PATH_INFO"] == "/crash":
        os._exit(7)  # the pool process dies mid-request
    raise ValueError("this view always fails")


router.route("/fails", fails, offload=True)
router.route("/crash", fails, offload=True)
