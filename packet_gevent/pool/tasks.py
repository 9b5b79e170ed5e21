"""Pool tasks as data: what a task is, how it travels, how its outcome comes back.

Nothing here knows about processes, sockets or gevent: a task is a call
``fn(*args, **kwargs)``; a *group* of tasks is encoded into one pickle (its
big buffers kept out of band) and decoded on the far side; an outcome is
``(OK, value)`` or ``(ERR, exception)``, with the remote traceback text
attached to the exception when it is rebuilt.  The fork pool moves these
over a socketpair; another backend could move the same bytes elsewhere.

Why groups: one pickle of 256 calls to the same function costs ~21 us here,
~0.08 us a call, against ~1.2 us for one pickle per call (the function
reference is written once, then memoised).  A group that fails to decode on
the far side is sent again one call per group, so a bad argument fails only
its own task (:class:`GroupDecodeError`).

Serializers: ``"pickle"`` (default; functions travel by reference, so they
must be importable: module-level ``def``) or ``"cloudpickle"`` (the optional
extra: lambdas and closures travel by value).  Both are protocol 5: ``bytes``
of at least :data:`OOB_THRESHOLD` and protocol-5 buffers (numpy arrays...)
are handed over separately, never copied into the pickle.
"""
from __future__ import annotations

import io
import itertools
import pickle
import sys
import traceback
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import SerializationError, WorkerError

__all__ = [
    "OK", "ERR", "OOB_THRESHOLD", "Task", "Call", "Encoded", "TaskCodec", "GroupDecodeError",
    "RemoteTraceback", "run_call", "encode_exception", "rebuild_exception",
    "call_chunk", "describe_callable", "serialization_hint",
]

#: Outcome tags.
OK = 0
ERR = 1

#: ``bytes`` and protocol-5 buffers at least this big travel out of band.
#: Same bound as the channel's (a 64 KiB copy costs ~10 us here).
OOB_THRESHOLD = 64 * 1024

#: A call: (fn, args, kwargs-or-None).
Call = Tuple[Callable[..., Any], tuple, Optional[Dict[str, Any]]]
#: An encoded object: (pickle bytes, out-of-band ``bytes``, protocol-5 buffers).
Encoded = Tuple[bytes, List[bytes], List[pickle.PickleBuffer]]

# Plain result types: cannot fail to unpickle, so replies made only of these
# skip the child's load check (see TaskCodec.encode_outcomes).
_PLAIN = frozenset((int, float, str, bytes, bool, type(None), complex))


class Task:
    """One call submitted to a pool, and the bookkeeping its scheduler keeps.

    ``id`` is unique per pool; ``timeout`` is its running-time limit in
    seconds (None: none); ``tries`` counts the processes that died while it
    was queued there; ``alone`` asks for it to be sent in a group of its own
    (its group once failed to decode).  ``fn``, ``args`` and ``kwargs`` are
    set to None once the task has its outcome (a finished future keeps only
    its result).  A mixin without slots: the fork pool makes each
    task and its future one object (one GC-tracked object per task; with
    20,000 tasks in flight every extra one lengthens the garbage
    collector's full passes, which stall the hub).
    """

    def __init__(self, id: int, fn: Callable[..., Any], args: tuple,
                 kwargs: Optional[Dict[str, Any]], timeout: Optional[float]) -> None:
        self.id = id
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.timeout = timeout
        self.tries = 0
        self.alone = False

    def __repr__(self) -> str:
        return f"<Task {self.id} {'done' if self.fn is None else describe_callable(self.fn)}>"


class GroupDecodeError(SerializationError):
    """A group of calls could not be decoded; each call must be retried alone."""


class RemoteTraceback(Exception):
    """The ``__cause__`` of an exception raised by a task: its traceback text in the child."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text.rstrip()}\n"""'


def describe_callable(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{module}.{name}"


def serialization_hint(fn: Any) -> str:
    """The fix to suggest when a call could not be pickled."""
    name = getattr(fn, "__qualname__", "") or ""
    if "<lambda>" in name or "<locals>" in name:
        return (f"{describe_callable(fn)} is a lambda or a nested function, which pickle sends "
                f"by reference and cannot find in another process: define it with `def` at "
                f"module level, or install the cloudpickle extra (pip install "
                f"'packet_gevent[cloudpickle]') and use ForkPool(serializer='cloudpickle')")
    return ("functions travel by reference (define them at module level, importable); "
            "arguments must be picklable (no open sockets, locks, generators...); "
            "ForkPool(serializer='cloudpickle') also sends lambdas and closures")


# -- pickling with out-of-band buffers -------------------------------------------------------

def _pickler_class(serializer: str) -> type:
    if serializer == "pickle":
        return pickle.Pickler
    if serializer == "cloudpickle":
        try:
            import cloudpickle
        except ImportError as exc:
            raise ImportError("serializer='cloudpickle' needs the cloudpickle package: "
                              "pip install 'packet_gevent[cloudpickle]'") from exc
        return cloudpickle.Pickler
    raise ValueError(f"serializer must be 'pickle' or 'cloudpickle', got {serializer!r}")


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, bigs: List[bytes], buffers: Sequence[Any]) -> None:
        super().__init__(io.BytesIO(data), buffers=buffers)
        self._bigs = bigs

    def persistent_load(self, pid: Any) -> Any:
        return self._bigs[pid]


class TaskCodec:
    """Encodes call groups (master side) and outcome lists (child side).

    ``serializer`` names the pickler ("pickle" or "cloudpickle"); decoding
    is plain ``pickle`` either way.
    """

    def __init__(self, serializer: str = "pickle") -> None:
        base = _pickler_class(serializer)
        self.serializer = serializer

        class OOBPickler(base):  # type: ignore[misc, valid-type]
            def __init__(self, file: io.BytesIO) -> None:
                super().__init__(file, 5, buffer_callback=self._buffer)
                self.bigs: List[bytes] = []
                self.buffers: List[pickle.PickleBuffer] = []

            def persistent_id(self, obj: Any) -> Optional[int]:
                # bytes skip reducer_override and buffer_callback; this is the
                # hook the C pickler calls for them.
                if type(obj) is bytes and len(obj) >= OOB_THRESHOLD:
                    self.bigs.append(obj)
                    return len(self.bigs) - 1
                return None

            def _buffer(self, buf: pickle.PickleBuffer) -> bool:
                if buf.raw().nbytes < OOB_THRESHOLD:
                    return True
                self.buffers.append(buf)
                return False

        self._pickler_class = OOBPickler
        self._fast_dumps = pickle.dumps if serializer == "pickle" else sys.modules["cloudpickle"].dumps
        # One pickler reused for every message: making one costs ~5 us, more
        # than pickling a small message.
        self._file = io.BytesIO()
        self._pickler = OOBPickler(self._file)
        self._busy = False

    def dumps(self, obj: Any, big: bool = True) -> Encoded:
        """(pickle, big bytes, buffers) of ``obj``.

        ``big=False`` promises no ``bytes`` of OOB_THRESHOLD or more inside:
        then the C pickler runs without calling back into Python for every
        object (a persistent_id hook costs ~0.1 us per object pickled).
        """
        if not big:
            buffers: List[pickle.PickleBuffer] = []
            return self._fast_dumps(obj, 5, buffer_callback=buffers.append), [], buffers
        if self._busy:  # re-entered from a __reduce__: a throwaway pickler
            file = io.BytesIO()
            pickler = self._pickler_class(file)
            pickler.dump(obj)
            return file.getvalue(), pickler.bigs, pickler.buffers
        self._busy = True
        file, pickler = self._file, self._pickler
        try:
            file.seek(0)
            file.truncate()
            pickler.dump(obj)
            return file.getvalue(), pickler.bigs, pickler.buffers
        finally:
            pickler.clear_memo()
            pickler.bigs, pickler.buffers = [], []  # the returned lists are the caller's
            if file.tell() > 1 << 20:  # do not keep a big buffer around
                self._file = io.BytesIO()
                self._pickler = self._pickler_class(self._file)
            self._busy = False

    @staticmethod
    def loads(encoded: Encoded) -> Any:
        data, bigs, buffers = encoded
        if not bigs:  # the C fast path
            return pickle.loads(data, buffers=buffers)
        return _Unpickler(data, bigs, buffers).load()

    # -- master -> child ------------------------------------------------------------------
    def encode_calls(self, calls: List[Call]) -> Encoded:
        """One pickle for the group; SerializationError (with the fix) if it cannot be made."""
        big = False
        for _fn, args, kwargs in calls:
            if _has_big_bytes(args) or (kwargs and _has_big_bytes(kwargs.values())):
                big = True
                break
        try:
            return self.dumps(calls, big)
        except Exception as exc:
            if len(calls) == 1:
                fn = calls[0][0]
                raise SerializationError(
                    f"cannot send the call to {describe_callable(fn)} to a pool process: "
                    f"{type(exc).__name__}: {exc}. {serialization_hint(fn)}") from exc
            raise SerializationError(f"cannot pickle a group of {len(calls)} calls: {exc}") from exc

    @classmethod
    def decode_calls(cls, encoded: Encoded, count: int) -> List[Call]:
        """The calls of a group; GroupDecodeError (count > 1) or SerializationError."""
        try:
            calls = cls.loads(encoded)
        except Exception as exc:
            if count > 1:
                raise GroupDecodeError(f"a group of {count} calls could not be unpickled: "
                                       f"{type(exc).__name__}: {exc}") from exc
            raise SerializationError(
                f"the pool process could not unpickle the call: {type(exc).__name__}: {exc}. "
                f"Functions and classes must be importable in the pool process (defined at "
                f"module level before the pool started its processes)") from exc
        return calls

    # -- child -> master ---------------------------------------------------------------------
    def encode_outcomes(self, outcomes: List[Tuple[int, int, Any]]) -> Encoded:
        """Encode [(task id, OK/ERR, value)]; a value that cannot travel becomes an error.

        Values that are not plain types are checked by loading them back here,
        so the master never receives a reply it cannot unpickle.
        """
        try:
            encoded = self.dumps(outcomes, _has_big_bytes([value for _, _, value in outcomes]))
            if any(type(value) not in _PLAIN for _, _, value in outcomes):
                self.loads(encoded)
            return encoded
        except Exception:
            if len(outcomes) == 1:
                return self.dumps([_unsendable(outcomes[0])])
            return self.dumps([self._checked(outcome) for outcome in outcomes])

    def _checked(self, outcome: Tuple[int, int, Any]) -> Tuple[int, int, Any]:
        try:
            self.loads(self.dumps(outcome))
            return outcome
        except Exception:
            return _unsendable(outcome)

    @classmethod
    def decode_outcomes(cls, encoded: Encoded) -> List[Tuple[int, int, Any]]:
        return cls.loads(encoded)


def _has_big_bytes(values: Iterable[Any]) -> bool:
    """Whether a ``bytes`` of OOB_THRESHOLD or more is among ``values`` or their items.

    Looks one level into tuples, lists and dict values (first 8 items): where
    call arguments and results carry payloads.  One deeper down is pickled in
    band: correct, one copy more each way.
    """
    for value in values:
        kind = type(value)
        if kind is bytes:
            if len(value) >= OOB_THRESHOLD:
                return True
        elif kind is tuple or kind is list:
            for item in value[:8]:
                if type(item) is bytes and len(item) >= OOB_THRESHOLD:
                    return True
        elif kind is dict:
            for item in itertools.islice(value.values(), 8):
                if type(item) is bytes and len(item) >= OOB_THRESHOLD:
                    return True
    return False


def _unsendable(outcome: Tuple[int, int, Any]) -> Tuple[int, int, Any]:
    tid, status, value = outcome
    what = "result" if status == OK else "exception"
    try:
        pickle.loads(pickle.dumps(value, 5))
        detail = "its out-of-band buffers failed"
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"
    error = SerializationError(
        f"the task's {what} ({type(value).__module__}.{type(value).__qualname__}) could not be "
        f"sent back from the pool process: {detail}. Return picklable values (plain data, "
        f"importable classes)")
    return tid, ERR, (error, "")


# -- running a call and carrying its exception -------------------------------------------------

def run_call(fn: Callable[..., Any], args: tuple, kwargs: Optional[Dict[str, Any]]) -> Tuple[int, Any]:
    """Run one call: (OK, result) or (ERR, encode_exception(exc))."""
    try:
        if kwargs:
            return OK, fn(*args, **kwargs)
        return OK, fn(*args)
    except BaseException as exc:  # SystemExit / KeyboardInterrupt in a task fail the task only
        return ERR, encode_exception(exc)


def encode_exception(exc: BaseException) -> Tuple[BaseException, str]:
    """(exception, traceback text), the exception replaced if it cannot travel.

    An exception whose pickle does not load back (classic case: a custom
    ``__init__`` with extra required arguments) would otherwise fail in the
    master; it becomes a WorkerError naming the original type.
    """
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.__traceback__ = None
    try:
        pickle.loads(pickle.dumps(exc, 5))
    except Exception as why:
        return WorkerError(
            f"{type(exc).__module__}.{type(exc).__qualname__}: {exc} (the exception "
            f"could not be pickled back to the master: {why})", remote_traceback=text), text
    return exc, text


def rebuild_exception(payload: Tuple[BaseException, str]) -> BaseException:
    """The exception, with the remote traceback as ``__cause__`` and ``remote_traceback``."""
    exc, text = payload
    if text:
        exc.__cause__ = RemoteTraceback(text)
        try:
            if getattr(exc, "remote_traceback", None) is None:
                exc.remote_traceback = text  # type: ignore[attr-defined]
        except (AttributeError, TypeError):  # an exception type with __slots__
            pass
    return exc


def call_chunk(fn: Callable[..., Any], chunk: List[tuple]) -> List[Any]:
    """Run ``fn(*args)`` for each args tuple of a ``map`` chunk, in order."""
    return [fn(*args) for args in chunk]
