"""Loading Packet's worker directory (WORKER_ROOT) and finding the classes in it.

``load_worker_root(path)`` imports every ``*.py`` in ``path`` (not those
starting with ``_`` or ``.``, which may hold helpers) and finds each module's
worker class: ``foo_worker.py`` -> ``FooWorker`` (Packet's rule), else the
:class:`~packet_gevent.Worker` subclasses the module defines.
``find_proxy_class`` finds the master-side proxy class a worker names.  Every
problem is a :class:`~packet_gevent.WorkerLoadError` that names the file (or
the worker) and says what to change.  Nothing here starts a process.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
import types
from typing import Dict, Iterable, List, Optional, Tuple, Type

from ..errors import WorkerLoadError
from .pimp import Pimp, find_pimp_class
from .worker import Worker, camel_name

__all__ = ["load_worker_root", "find_proxy_class"]

logger = logging.getLogger(__name__)

_loaded_roots: Dict[str, Tuple[Dict[str, type], List[types.ModuleType]]] = {}


def load_worker_root(path: str) -> Tuple[Dict[str, type], List[types.ModuleType]]:
    """Import every worker module of ``path``; return ({worker_name: class}, modules).

    Modules are imported once per directory and process, as submodules of a
    private package (so pickle finds classes they define), with no change to
    ``sys.path``.  Raises WorkerLoadError naming the file on any problem.
    """
    real = os.path.realpath(path)
    if real in _loaded_roots:
        return _loaded_roots[real]
    if not os.path.isdir(real):
        raise WorkerLoadError(f"worker_root {path!r} is not a directory; pass the directory "
                              f"that holds the worker modules (foo_worker.py ...)")
    package_name = "_packet_workers_" + hashlib.sha1(real.encode()).hexdigest()[:12]
    package = sys.modules.get(package_name)
    if package is None:
        package = types.ModuleType(package_name, f"Packet workers loaded from {real}")
        package.__path__ = [real]  # type: ignore[attr-defined]
        sys.modules[package_name] = package
    classes: Dict[str, type] = {}
    modules = []
    for filename in sorted(os.listdir(real)):
        if not filename.endswith(".py") or filename.startswith(("_", ".")):
            continue
        module = _import_file(package_name, os.path.join(real, filename))
        modules.append(module)
        for cls in _worker_classes(module, filename[:-3], os.path.join(real, filename)):
            other = classes.get(cls.worker_name)
            if other is not None and other is not cls:
                raise WorkerLoadError(f"two worker classes are named {cls.worker_name!r}: "
                                      f"{other.__module__}.{other.__name__} and {cls.__name__} "
                                      f"in {filename}; give one another worker_name")
            classes[cls.worker_name] = cls
    _loaded_roots[real] = (classes, modules)
    logger.debug("loaded workers %s from %s", sorted(classes), real)
    return classes, modules


def find_proxy_class(cls: type, modules: Iterable[Optional[types.ModuleType]] = ()) -> Type[Pimp]:
    """The proxy class of worker class ``cls`` (its ``worker_proxy``; MetaPimp if None).

    A proxy named by a string is looked up in ``modules`` (the worker
    directory's), then in the module that defines ``cls``, then among every
    Pimp subclass defined so far.
    """
    search = [m for m in (*modules, sys.modules.get(cls.__module__)) if m is not None]
    name, proxy = getattr(cls, "worker_name", cls.__name__), getattr(cls, "worker_proxy", None)
    try:
        return find_pimp_class(proxy, search)
    except (LookupError, TypeError) as exc:
        raise WorkerLoadError(f"worker {name!r}: {exc}") from None


def _import_file(package_name: str, filepath: str) -> types.ModuleType:
    stem = os.path.basename(filepath)[:-3]
    name = f"{package_name}.{stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, filepath)
    if spec is None or spec.loader is None:
        raise WorkerLoadError(f"cannot import worker module {filepath}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        raise WorkerLoadError(f"importing worker module {filepath} failed: "
                              f"{type(exc).__name__}: {exc}") from exc
    setattr(sys.modules[package_name], stem, module)
    return module


def _worker_classes(module: types.ModuleType, stem: str, filepath: str) -> List[type]:
    by_rule = getattr(module, camel_name(stem), None)
    if isinstance(by_rule, type) and issubclass(by_rule, Worker) and by_rule is not Worker:
        return [by_rule]
    defined = [value for value in vars(module).values()
               if isinstance(value, type) and issubclass(value, Worker) and value is not Worker
               and value.__module__ == module.__name__]
    if not defined:
        raise WorkerLoadError(f"{filepath} defines no worker class: expected "
                              f"'class {camel_name(stem)}(packet_gevent.Worker)' (Packet's rule: "
                              f"{stem}.py defines {camel_name(stem)}) or another Worker subclass; "
                              f"put helper modules in files starting with '_'")
    return defined
