"""HTTP on the reactor: a WSGI server (Packet's Mongrel), sans-IO request parsing, offload.

Layering: this package sits above the reactor layer and the pool; it may
import ``net``, ``pool``, ``ipc`` and the ``packet`` façade, and nothing below
imports it.
"""
from .body import FileWrapper, RequestBody
from .offload import Offloaded, Router, offload
from .parser import Limits
from .server import HTTPConnection, ServerOptions, WSGIServer, serve

__all__ = ["WSGIServer", "serve", "ServerOptions", "Limits", "HTTPConnection", "FileWrapper",
           "RequestBody", "offload", "Offloaded", "Router"]
