"""The install metadata says what is supported: Python and gevent floors, license, build system."""
import configparser
import os
import sys

from tests.conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10
    tomllib = None


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    return cfg


def test_python_floor_is_the_oldest_tested_version_and_this_one_qualifies():
    cfg = _setup_cfg()
    assert cfg["options"]["python_requires"].strip() == ">=3.10"
    assert sys.version_info >= (3, 10)
    classifiers = cfg["metadata"]["classifiers"]
    for minor in (10, 11, 12, 13):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
    assert "3.9" not in classifiers


def test_gevent_floor_depends_on_the_python_patch_release():
    requires = [line.strip() for line in _setup_cfg()["options"]["install_requires"].splitlines()
                if line.strip()]
    assert 'gevent>=25.4.1; python_full_version < "3.13.5"' in requires
    assert 'gevent>=25.8.1; python_full_version >= "3.13.5"' in requires
    import gevent
    floor = (25, 8, 1) if sys.version_info >= (3, 13, 5) else (25, 4, 1)
    assert tuple(int(p) for p in gevent.__version__.split(".")[:3]) >= floor


def test_license_file_is_mit_and_referenced():
    cfg = _setup_cfg()
    assert cfg["metadata"]["license"].strip() == "MIT"
    assert cfg["metadata"]["license_files"].strip() == "LICENSE"
    with open(os.path.join(ROOT, "LICENSE")) as fh:
        text = fh.read()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text


def test_pyproject_declares_the_setuptools_build_backend():
    path = os.path.join(ROOT, "pyproject.toml")
    with open(path, "rb") as fh:
        raw = fh.read()
    if tomllib is None:
        assert b'build-backend = "setuptools.build_meta"' in raw
        return
    build = tomllib.loads(raw.decode())["build-system"]
    assert build["build-backend"] == "setuptools.build_meta"
    assert any(req.startswith("setuptools") for req in build["requires"])
    # setup.cfg keeps the metadata: pyproject.toml must not shadow it with a [project] table.
    assert "project" not in tomllib.loads(raw.decode())


def test_installed_metadata_matches():
    from importlib import metadata
    meta = metadata.metadata("packet_gevent")
    assert meta["Requires-Python"] == ">=3.10"
    assert meta["License"] == "MIT" or meta.get("License-Expression") == "MIT"
