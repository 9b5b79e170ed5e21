#!/usr/bin/env python3
"""Developer entry point: ``python3 dev.py demo`` and ``python3 dev.py test``.

Works on a fresh machine that has only python3: the first run creates a local
virtual environment in ``.venv`` and installs the package with its test extras
into it; later runs reuse it.  Everything after the sub-command is passed on
(to the demo, or to pytest).
"""
import os
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(ROOT, ".venv")
PYTHON = os.path.join(VENV, "bin", "python")
STAMP = os.path.join(VENV, ".packet_gevent-installed")
EXTRAS = ".[test,bench,dask]"


def ensure_venv() -> None:
    if not os.path.exists(PYTHON):
        print("dev.py: creating virtual environment in .venv", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    setup_mtime = max(os.path.getmtime(os.path.join(ROOT, f)) for f in ("setup.cfg", "setup.py"))
    if os.path.exists(STAMP) and os.path.getmtime(STAMP) >= setup_mtime:
        return
    print("dev.py: installing packet_gevent and its test dependencies", flush=True)
    pip = [PYTHON, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.check_call(pip + ["-e", EXTRAS], cwd=ROOT)
    with open(STAMP, "w") as f:
        f.write("ok\n")


def main(argv: list) -> int:
    if not argv or argv[0] not in ("demo", "test", "bench", "python"):
        print(__doc__)
        print("usage: python3 dev.py {demo|test|bench NAME|python ...} [args...]")
        return 2
    ensure_venv()
    cmd, rest = argv[0], argv[1:]
    if cmd == "demo":
        args = [PYTHON, "-m", "demos.eval_server"] + rest
    elif cmd == "test":
        args = [PYTHON, "-m", "pytest"] + rest
    elif cmd == "bench":
        name = rest[0] if rest else "echo"
        args = [PYTHON, "-m", "benchmarks." + name] + rest[1:]
    else:
        args = [PYTHON] + rest
    os.chdir(ROOT)
    try:
        return subprocess.call(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
