"""Pickle protocol 5 with big buffers kept out of band, for messages between our processes.

One rule for the channel and the pool's task codec: a ``bytes`` of at least
:data:`OOB_THRESHOLD`, at any depth, and protocol-5 buffers (numpy arrays,
``PickleBuffer``) are not copied into the pickle; the pickler hands them to a
*collector*, which the caller sends separately (the channel as frames of
their own, straight from the caller's memory).  The unpickler gets them back
by index: ``bytes`` by persistent id, buffers through ``buffers=``.

``bytes`` never reach ``reducer_override`` or ``buffer_callback``;
``persistent_id`` is the one hook the C pickler calls for them, once per
object (~0.1 us each), so callers use :class:`OOBPickler` only for messages
that :func:`holds_big_bytes` says hold one, and ``pickle.dumps`` with a
``buffer_callback`` otherwise.  Nothing here does I/O.
"""
from __future__ import annotations

import io
import pickle
from itertools import islice
from typing import Any, Dict, List, Sequence, Union

__all__ = ["OOB_THRESHOLD", "holds_big_bytes", "OOBPickler", "oob_pickler_class", "OOBUnpickler",
           "FrameCollector", "SplitCollector"]

#: ``bytes`` and protocol-5 buffers at least this big travel out of band.
#: Below it the copy into and out of the pickle costs less than an extra
#: frame and allocation (a 64 KiB copy takes ~10 us here).
OOB_THRESHOLD = 64 * 1024

Chunk = Union[bytes, memoryview]


def holds_big_bytes(obj: Any, top: int = 8, _bytes=bytes, _tuple=tuple, _list=list,
                    _dict=dict) -> bool:
    """Whether ``obj`` has a ``bytes`` of OOB_THRESHOLD or more where messages carry payloads.

    Looks at ``obj`` itself, its first ``top`` items (a tuple/list, or a
    dict's values) and the first 8 items of those that are
    tuples/lists/dicts.  0.1-0.5 us for a small message.  A big ``bytes``
    deeper down is pickled in band: correct, one copy more each way.
    """
    kind = type(obj)
    if kind is _bytes:
        return len(obj) >= OOB_THRESHOLD
    if kind is _tuple or kind is _list:
        items = obj if len(obj) <= top else obj[:top]
    elif kind is _dict:
        items = obj.values() if len(obj) <= top else islice(obj.values(), top)
    else:
        return False
    for item in items:
        kind = type(item)
        if kind is _bytes:
            if len(item) >= OOB_THRESHOLD:
                return True
        elif kind is _tuple or kind is _list:
            for sub in (item if len(item) <= 8 else item[:8]):
                if type(sub) is _bytes and len(sub) >= OOB_THRESHOLD:
                    return True
        elif kind is _dict:
            for sub in islice(item.values(), 8):
                if type(sub) is _bytes and len(sub) >= OOB_THRESHOLD:
                    return True
    return False


class FrameCollector:
    """The out-of-band buffers of one channel message, in order, with a kind letter each.

    ``b`` a big ``bytes`` (persistent id = its index), ``r``/``w`` a
    read-only/writable protocol-5 buffer.  Every protocol-5 buffer goes out
    of band, even a small one (they are rare and mostly big); a writable one
    is copied now, since the caller may change it before the kernel takes it.
    """

    __slots__ = ("kinds", "buffers")

    def __init__(self) -> None:
        self.kinds = bytearray()
        self.buffers: List[Chunk] = []

    def add_bytes(self, obj: bytes) -> int:
        return self._add(b"b", memoryview(obj))

    def _add(self, kind: bytes, buf: Chunk) -> int:
        self.kinds += kind
        self.buffers.append(buf)
        return len(self.buffers) - 1

    def buffer(self, buf: pickle.PickleBuffer) -> bool:
        """buffer_callback: out of band (returns False)."""
        raw = buf.raw()
        if raw.readonly:
            self._add(b"r", raw)
        else:
            self._add(b"w", raw.tobytes())
        return False


class SplitCollector:
    """Big ``bytes`` and protocol-5 buffers in two lists (the pool's task encoding).

    Buffers under OOB_THRESHOLD stay in band; the others are kept as they are
    (the task codec's caller sends them on at once).
    """

    __slots__ = ("bigs", "buffers")

    def __init__(self) -> None:
        self.bigs: List[bytes] = []
        self.buffers: List[pickle.PickleBuffer] = []

    def add_bytes(self, obj: bytes) -> int:
        self.bigs.append(obj)
        return len(self.bigs) - 1

    def buffer(self, buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes < OOB_THRESHOLD:
            return True
        self.buffers.append(buf)
        return False


_CLASSES: Dict[type, type] = {}


def oob_pickler_class(base: type = pickle.Pickler) -> type:
    """The out-of-band pickler built on ``base`` (``pickle.Pickler``, ``cloudpickle.Pickler``).

    ``cls(file, collector)``: protocol 5; set ``.collector`` to reuse one
    pickler for the next message (making one costs ~5 us).
    """
    cls = _CLASSES.get(base)
    if cls is None:
        class cls(base):  # type: ignore[no-redef, valid-type, misc]
            def __init__(self, file: io.BytesIO, collector: Any) -> None:
                # The buffer callback must not hold the pickler: a cycle would keep
                # each message's pickler, collector and buffers alive until a gc
                # pass, and malloc could not reuse a big payload's memory.
                box = [collector]
                super().__init__(file, 5, buffer_callback=lambda buf: box[0].buffer(buf))
                self._box = box

            @property
            def collector(self) -> Any:
                return self._box[0]

            @collector.setter
            def collector(self, collector: Any) -> None:
                self._box[0] = collector

            def persistent_id(self, obj: Any) -> Any:
                if type(obj) is bytes and len(obj) >= OOB_THRESHOLD:
                    return self._box[0].add_bytes(obj)
                return None

        cls.__name__ = cls.__qualname__ = f"OOB{base.__name__}"
        _CLASSES[base] = cls
    return cls


#: The out-of-band pickler on the standard ``pickle.Pickler``.
OOBPickler = oob_pickler_class()


class OOBUnpickler(pickle.Unpickler):
    """Loads what an OOB pickler wrote: ``persistent[pid]`` for each big ``bytes``."""

    def __init__(self, data: Any, persistent: Sequence[Any], buffers: Sequence[Any]) -> None:
        super().__init__(io.BytesIO(data), buffers=buffers)
        self._persistent = persistent

    def persistent_load(self, pid: Any) -> Any:
        return self._persistent[pid]
