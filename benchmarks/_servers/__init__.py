"""Peer echo servers the echo benchmark compares ours against.

Each module is run as its own process (``python -m benchmarks._servers.NAME
--host 127.0.0.1 --port 0``), prints ``<name> echo server listening on
HOST:PORT`` on stdout (flushed) once it accepts connections, and exits with
status 0 on SIGTERM or SIGINT.
"""
