"""Shared command-line bits for the demos: --host/--port/--log-level and logging set-up."""
import argparse
import logging


def parser(description: str, default_port: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=default_port,
                   help="TCP port (default: %(default)s; 0 picks a free port)")
    p.add_argument("--log-level", default="INFO", help="logging level (default: %(default)s)")
    return p


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
