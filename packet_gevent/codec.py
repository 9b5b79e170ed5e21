"""Safe object codecs for ``send_object`` on network connections.

A codec turns an object into bytes and back; :class:`ObjectDecoder` combines
one with the frame decoder so a connection can turn received bytes into
objects.  JSON is the default.  There is deliberately no pickle codec here:
unpickling bytes that came from the network runs whatever code the sender
chose.  (Master<->child pipes, where both ends are our own processes, use
pickle in their own module; never this one.)
"""
from __future__ import annotations

import json
from collections import deque
from typing import Deque, Dict, List, Protocol, Union, runtime_checkable

from .errors import CodecError
from .framing import DEFAULT_MAX_FRAME_SIZE, BytesLike, FrameDecoder, encode_frame

__all__ = ["Codec", "JsonCodec", "ObjectDecoder", "encode_object", "get_codec"]

# How many bytes of undecodable data an error message shows.
_SHOW_BYTES = 40


@runtime_checkable
class Codec(Protocol):
    """What ``send_object`` needs: a name, ``encode`` and ``decode``.

    ``encode`` raises CodecError for an object it cannot represent;
    ``decode`` raises CodecError for bytes it cannot read.
    """

    name: str

    def encode(self, obj: object) -> bytes: ...

    def decode(self, data: bytes) -> object: ...


def _show(data: BytesLike) -> str:
    shown = bytes(data[:_SHOW_BYTES])
    return repr(shown) + (f"... ({len(data)} bytes)" if len(data) > _SHOW_BYTES else "")


class _NotSerialisable(Exception):
    def __init__(self, obj: object) -> None:
        super().__init__(type(obj).__qualname__)
        self.type_name = f"{type(obj).__module__}.{type(obj).__qualname__}"


def _reject_default(obj: object) -> object:
    raise _NotSerialisable(obj)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


class JsonCodec:
    """Strict UTF-8 JSON with compact separators.

    Encodes dict (str keys), list, tuple (decoded as list), str, int, float,
    bool and None.  NaN and Infinity are refused both ways: they are not
    JSON and peers in other languages could not read them.
    """

    name = "json"

    def encode(self, obj: object) -> bytes:
        try:
            text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False, default=_reject_default)
            return text.encode("utf-8")
        except _NotSerialisable as exc:
            raise CodecError(
                f"the json codec cannot encode an object of type {exc.type_name} "
                f"(found in a {type(obj).__name__}); send only dict, list, str, int, "
                f"float, bool and None, or convert the value first") from None
        except (TypeError, ValueError, RecursionError, UnicodeEncodeError) as exc:
            raise CodecError(
                f"the json codec cannot encode this {type(obj).__name__}: {exc}; "
                f"send only finite numbers, str keys, valid text and acyclic, "
                f"not too deep data") from exc

    def decode(self, data: BytesLike) -> object:
        try:
            text = str(data, "utf-8")
        except UnicodeDecodeError as exc:
            raise CodecError(
                f"received bytes are not UTF-8 text, so not json: {_show(data)} "
                f"({exc.reason} at byte {exc.start}); the peer sends another "
                f"format (pickle?) or the stream is corrupt") from None
        try:
            return json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            raise CodecError(
                f"received bytes are not valid json: {_show(data)} ({exc}); "
                f"the peer sends another format or a different codec") from None

    def __repr__(self) -> str:
        return "JsonCodec()"


_CODECS: Dict[str, type] = {"json": JsonCodec}


def get_codec(name_or_codec: Union[str, Codec, None] = None) -> Codec:
    """Return a codec for ``"json"`` (also the default for None), or a codec as given.

    Raises CodecError (a ValueError) naming the known codecs for an unknown
    name, and TypeError for an object that is not a codec.
    """
    if name_or_codec is None:
        return JsonCodec()
    if isinstance(name_or_codec, str):
        factory = _CODECS.get(name_or_codec.lower())
        if factory is not None:
            return factory()
        known = ", ".join(sorted(_CODECS))
        why = (" There is deliberately no pickle codec: unpickling network bytes runs "
               "code of the sender's choosing." if "pickle" in name_or_codec.lower() else "")
        raise CodecError(f"unknown codec {name_or_codec!r}; known codecs: {known}. Or pass "
                         f"a codec object with name, encode() and decode().{why}")
    if isinstance(name_or_codec, Codec):
        return name_or_codec
    raise TypeError(f"expected a codec name or an object with name, encode() and decode(), "
                    f"got {type(name_or_codec).__name__}")


def encode_object(obj: object, codec: Union[str, Codec, None] = None) -> bytes:
    """Return ``obj`` encoded by ``codec`` (default json) as one whole frame."""
    return encode_frame(get_codec(codec).encode(obj))


class ObjectDecoder:
    """Bytes in, objects out: a :class:`FrameDecoder` followed by a codec.

    ``feed(data)`` returns the objects of every frame ``data`` completed.
    FrameError means the stream is broken (see FrameDecoder).  CodecError
    means one frame held something the codec refuses; the framing is still in
    sync, and nothing else is lost: the objects decoded before the bad frame
    and the frames after it are returned by the next ``feed`` (``b""`` will
    do).
    """

    def __init__(self, codec: Union[str, Codec, None] = None,
                 max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.codec = get_codec(codec)
        self._frames = FrameDecoder(max_frame_size)
        self._pending: Deque[bytes] = deque()
        self._ready: List[object] = []

    @property
    def max_frame_size(self) -> int:
        return self._frames.max_frame_size

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished frame held by the frame decoder."""
        return self._frames.buffered

    @property
    def in_frame(self) -> bool:
        return self._frames.in_frame

    def feed(self, data: BytesLike) -> List[object]:
        """Consume ``data``; return the decoded object of each frame it completed."""
        self._pending.extend(self._frames.feed(data))
        out, self._ready = self._ready, []
        decode = self.codec.decode
        while self._pending:
            frame = self._pending.popleft()
            try:
                out.append(decode(frame))
            except CodecError:
                self._ready = out
                raise
        return out

    def eof(self) -> None:
        """End of stream: raise FrameError if it cut a frame short."""
        self._frames.eof()
