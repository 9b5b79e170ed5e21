#!/usr/bin/env python3
"""Developer entry point: ``python3 dev.py demo`` and ``python3 dev.py test``.

Works on a fresh machine that has only python3: the first run creates a local
virtual environment and installs the package with its extras (``EXTRAS``)
into it; later runs reuse it (reinstalling when setup.cfg, setup.py or
pyproject.toml changed, or ``EXTRAS`` did).  Everything after the sub-command
is passed on (to the demo, or to pytest).

The interpreter is the python3 running this script, in ``.venv``; pick another
with ``--python PATH`` (or the ``PACKET_GEVENT_PYTHON`` environment variable),
which gets its own ``.venv-X.Y`` (``--venv DIR`` or ``PACKET_GEVENT_VENV``
chooses the directory).  dev.py then *becomes* the command (exec): signals
(Ctrl-C, ``kill``) reach the demo or pytest directly and its exit status is
dev.py's.
"""
import os
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.abspath(__file__))
#: The setup.cfg extras installed into the venv.  Add a name here when an
#: extra's dependencies are needed by the tests (e.g. "http", "dask").
EXTRAS = ["test", "bench", "dask"]
USAGE = ("usage: python3 dev.py [--python PYTHON] [--venv DIR] "
         "{demo|test|bench NAME|python ...} [args...]")


def interpreter_version(python: str) -> str:
    out = subprocess.check_output(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], text=True)
    return out.strip()


def venv_python(venv_dir: str) -> str:
    return os.path.join(venv_dir, "bin", "python")


def ensure_venv(python: str, venv_dir: str) -> str:
    """Create (with ``python``) and fill ``venv_dir`` if needed; return its interpreter."""
    vpython = venv_python(venv_dir)
    if not os.path.exists(vpython):
        print(f"dev.py: creating virtual environment in {os.path.relpath(venv_dir, ROOT)} "
              f"(Python {interpreter_version(python)})", file=sys.stderr, flush=True)
        if os.path.realpath(python) == os.path.realpath(sys.executable):
            venv.EnvBuilder(with_pip=True).create(venv_dir)
        else:
            subprocess.check_call([python, "-m", "venv", venv_dir])
    stamp = os.path.join(venv_dir, ".packet_gevent-installed")
    wanted = ".[" + ",".join(EXTRAS) + "]"
    setup_mtime = max(os.path.getmtime(os.path.join(ROOT, f))
                      for f in ("setup.cfg", "setup.py", "pyproject.toml"))
    if os.path.exists(stamp) and os.path.getmtime(stamp) >= setup_mtime:
        with open(stamp) as f:
            if f.read().strip() == wanted:
                return vpython
    print(f"dev.py: installing packet_gevent{wanted} into {os.path.relpath(venv_dir, ROOT)}",
          file=sys.stderr, flush=True)
    pip = [vpython, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.check_call(pip + ["-e", wanted], cwd=ROOT, stdout=sys.stderr)  # stdout: the command's
    with open(stamp, "w") as f:
        f.write(wanted + "\n")
    return vpython


def parse_options(argv: list) -> tuple:
    python = os.environ.get("PACKET_GEVENT_PYTHON") or sys.executable
    venv_dir = os.environ.get("PACKET_GEVENT_VENV") or None
    while argv and argv[0] in ("--python", "--venv"):
        if len(argv) < 2:
            raise SystemExit(USAGE)
        if argv[0] == "--python":
            python = argv[1]
        else:
            venv_dir = argv[1]
        argv = argv[2:]
    if venv_dir is None:
        same = os.path.realpath(python) == os.path.realpath(sys.executable)
        venv_dir = ".venv" if same else ".venv-" + interpreter_version(python)
    return python, os.path.join(ROOT, venv_dir), argv


def main(argv: list) -> int:
    python, venv_dir, argv = parse_options(argv)
    if not argv or argv[0] not in ("demo", "test", "bench", "python"):
        print(__doc__)
        print(USAGE)
        return 2
    vpython = ensure_venv(python, venv_dir)
    cmd, rest = argv[0], argv[1:]
    if cmd == "demo":
        args = [vpython, "-m", "demos.eval_server"] + rest
    elif cmd == "test":
        args = [vpython, "-m", "pytest"] + rest
    elif cmd == "bench":
        name = rest[0] if rest else "echo"
        args = [vpython, "-m", "benchmarks." + name] + rest[1:]
    else:
        args = [vpython] + rest
    os.chdir(ROOT)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(vpython, args)  # signals and the exit status are the command's own
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
