"""Shared command-line bits for the demos: --host/--port/--log-level and logging set-up."""
import argparse
import logging
import sys


def program_name() -> str:
    """``python -m demos.x`` when run that way (argparse would say ``x.py``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return f"python -m {spec.name}" if spec is not None and spec.name else None


def parser(description: str, default_port: int, *,
           host_help: str = "address to bind (default: %(default)s)",
           port_help: str = "TCP port to listen on (default: %(default)s; 0 picks a free port)"
           ) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=program_name(), description=description)
    p.add_argument("--host", default="127.0.0.1", help=host_help)
    p.add_argument("--port", type=int, default=default_port, help=port_help)
    p.add_argument("--log-level", default="INFO", help="logging level (default: %(default)s)")
    return p


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
