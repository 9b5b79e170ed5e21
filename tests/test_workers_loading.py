"""Loading a worker directory, worker class settings and proxy lookup (no processes)."""
import os
import pickle

import pytest

from packet_gevent import InvalidWorker, MetaPimp, Pimp, Reactor, Worker, WorkerLoadError
from packet_gevent.workers.pimp import Callback, find_pimp_class
from packet_gevent.workers.worker import snake_name
from packet_gevent.workers.manager import load_worker_root

HERE = os.path.dirname(os.path.abspath(__file__))
DIRS = os.path.join(HERE, "worker_dirs")


def test_loads_every_worker_module_by_packets_naming_rule():
    classes, modules = load_worker_root(os.path.join(DIRS, "basic"))
    assert sorted(classes) == ["double_worker", "echo_worker", "lazy_worker", "pool_worker",
                               "proxied_worker"]
    assert classes["echo_worker"].__name__ == "EchoWorker"
    assert classes["lazy_worker"].no_auto_load is True
    assert classes["pool_worker"].pool_size == 3
    assert not any(m.__name__.endswith("_helpers") for m in modules)  # '_' files are helpers
    # Loaded once per directory: the same classes again.
    assert load_worker_root(os.path.join(DIRS, "basic"))[0]["echo_worker"] is classes["echo_worker"]


def test_worker_classes_pickle_by_reference():
    classes, _ = load_worker_root(os.path.join(DIRS, "basic"))
    cls = classes["double_worker"]
    assert pickle.loads(pickle.dumps(cls)) is cls


def test_module_without_worker_class_names_the_file():
    with pytest.raises(WorkerLoadError, match=r"helper\.py defines no worker class.*class Helper"):
        load_worker_root(os.path.join(DIRS, "no_class"))


def test_module_that_fails_to_import_names_the_file_and_cause():
    with pytest.raises(WorkerLoadError, match=r"broken_worker\.py failed: ModuleNotFoundError") as info:
        load_worker_root(os.path.join(DIRS, "broken_import"))
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_worker_root_must_be_a_directory(tmp_path):
    with pytest.raises(WorkerLoadError, match="is not a directory"):
        load_worker_root(str(tmp_path / "missing"))


def test_reactor_start_reports_a_bad_worker_directory():
    reactor = Reactor(worker_root=os.path.join(DIRS, "no_class"))
    try:
        with pytest.raises(WorkerLoadError, match="helper.py"):
            reactor.start()
    finally:
        reactor.stop(timeout=1)


def test_two_classes_with_one_worker_name_are_refused(tmp_path):
    (tmp_path / "a_worker.py").write_text(
        "from packet_gevent import Worker\nclass AWorker(Worker):\n    worker_name = 'same'\n")
    (tmp_path / "b_worker.py").write_text(
        "from packet_gevent import Worker\nclass BWorker(Worker):\n    worker_name = 'same'\n")
    with pytest.raises(WorkerLoadError, match="two worker classes are named 'same'"):
        load_worker_root(str(tmp_path))


def test_worker_found_by_worker_name_when_the_class_name_differs(tmp_path):
    (tmp_path / "misc.py").write_text(
        "from packet_gevent import Worker\n"
        "class Cruncher(Worker):\n    worker_name = 'crunch'\n"
        "class Other:\n    pass\n")
    classes, _ = load_worker_root(str(tmp_path))
    assert list(classes) == ["crunch"] and classes["crunch"].__name__ == "Cruncher"


def test_worker_settings_packet_style():
    class FooBarWorker(Worker):
        pass

    assert FooBarWorker.worker_name == "foo_bar_worker"
    FooBarWorker.set_worker_name("foo")
    FooBarWorker.set_no_auto_load(True)
    FooBarWorker.set_worker_proxy("foo_handler")
    assert (FooBarWorker.worker_name, FooBarWorker.no_auto_load, FooBarWorker.worker_proxy) == \
        ("foo", True, "foo_handler")
    assert snake_name("HTTPFetchWorker") == "http_fetch_worker"
    with pytest.raises(ValueError, match="pool_size must be an int >= 1"):
        type("BadPool", (Worker,), {"pool_size": 0})


def test_find_pimp_class():
    class FancyHandler(Pimp):
        def handle_object(self, obj):
            pass

    assert find_pimp_class(None) is MetaPimp
    assert find_pimp_class("fancy_handler") is FancyHandler
    assert find_pimp_class(FancyHandler) is FancyHandler
    with pytest.raises(LookupError, match="no Pimp subclass named 'MissingHandler'"):
        find_pimp_class("missing_handler")
    with pytest.raises(TypeError, match="not a subclass of packet_gevent.Pimp"):
        find_pimp_class(dict)


def test_a_proxy_that_cannot_be_found_is_a_load_error():
    class NoProxyWorker(Worker):
        worker_proxy = "absent_handler"

    reactor = Reactor()
    try:
        with pytest.raises(WorkerLoadError, match="no_proxy_worker.*AbsentHandler"):
            reactor.start_worker(worker=NoProxyWorker)
        with pytest.raises(InvalidWorker):
            reactor.ask_worker("no_proxy_worker")
    finally:
        reactor.stop(timeout=1)


def test_callback_wraps_a_callable():
    seen = []
    first, second = Callback(seen.append), Callback(seen.append)
    assert first.signature != second.signature
    first({"x": 1})
    assert seen == [{"x": 1}]
    with pytest.raises(TypeError, match="needs a callable"):
        Callback(42)


def test_worker_and_proxy_names_are_exported_lazily():
    import packet_gevent
    assert packet_gevent.Worker is Worker
    assert packet_gevent.MetaPimp is MetaPimp and packet_gevent.Callback is Callback


def test_workers_module_still_exports_the_names_that_moved():
    from packet_gevent.workers import loader
    from packet_gevent.workers import pimp
    from packet_gevent.workers import worker
    from packet_gevent.workers.manager import (MAX_QUEUED, Callback as C, MetaPimp as M, Pimp as P,
                                       Worker as W, WorkerManager, load_worker_root as load)
    assert (W, P, M, C, load) == (worker.Worker, pimp.Pimp, pimp.MetaPimp, pimp.Callback,
                                  loader.load_worker_root)
    assert isinstance(MAX_QUEUED, int) and WorkerManager.__module__ == "packet_gevent.workers.manager"


def test_worker_root_setting_for_packet_users_via_reactor_run(tmp_path):
    """Packet's WORKER_ROOT: a global of the main script (or the environment) is honoured by Reactor.run."""
    from tests.conftest import run_script
    workers = tmp_path / "worker"
    workers.mkdir()
    (workers / "ping_worker.py").write_text(
        "from packet_gevent import Worker\n"
        "class PingWorker(Worker):\n"
        "    worker_name = 'ping_worker'\n"
        "    def receive_data(self, request):\n"
        "        self.reply(request, 'pong')\n")
    code = f"""
        import gevent
        from packet_gevent import Reactor
        WORKER_ROOT = {str(workers)!r}
        replies = []
        def setup(r):
            def ask():
                r.ask_worker("ping_worker", data="ping", callback=lambda reply: (replies.append(reply["data"]), r.stop()))
            r.next_turn(ask)
        Reactor.run(setup)
        print("replies", replies)
    """
    result = run_script(code, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "replies ['pong']" in result.stdout


def test_one_camel_case_rule_for_worker_files_and_proxy_names():
    from packet_gevent.workers.worker import camel_name, snake_name
    assert camel_name("foo_handler") == "FooHandler" == camel_name("FooHandler")
    assert camel_name("http_APIClient") == "HttpAPIClient"
    assert camel_name(snake_name("EvalWorker")) == "EvalWorker"
