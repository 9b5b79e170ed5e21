"""README promises: every test it names exists; the quick start is the command CI runs."""
import os
import re

from tests.conftest import ROOT


def read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def test_every_test_named_in_the_readme_exists():
    readme = read("README.md")
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", readme))
    assert len(named) >= 10
    defined = set()
    for name in os.listdir(os.path.join(ROOT, "tests")):
        if name.endswith(".py"):
            defined.update(re.findall(r"^\s*def (test_[a-z0-9_]+)", read(os.path.join("tests", name)), re.M))
    assert sorted(named - defined) == []


def test_quick_start_commands_are_the_ones_ci_runs():
    readme = read("README.md")
    assert "python3 dev.py demo" in readme and "python3 dev.py test" in readme
    assert "python3 dev.py test" in read(".ci/run")
