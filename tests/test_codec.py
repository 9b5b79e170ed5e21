"""Tests for packet_gevent.codec: JSON round trips, errors, refusing pickle, limits."""
from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings, strategies as st

from packet_gevent.codec import Codec, JsonCodec, ObjectDecoder, encode_object, get_codec
from packet_gevent.errors import CodecError, FrameError
from packet_gevent.framing import encode_frame, encode_frames

BOUNDED = settings(max_examples=200, deadline=None)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


# -- JsonCodec -------------------------------------------------------------------

def test_json_is_compact_utf8():
    codec = JsonCodec()
    assert codec.name == "json"
    assert codec.encode({"a": [1, 2.5, None, True], "é": "ü"}) == \
        '{"a":[1,2.5,null,true],"é":"ü"}'.encode("utf-8")


@BOUNDED
@given(json_values)
def test_json_round_trip(value):
    codec = JsonCodec()
    assert codec.decode(codec.encode(value)) == value


def test_tuples_come_back_as_lists():
    codec = JsonCodec()
    assert codec.decode(codec.encode({"t": (1, 2)})) == {"t": [1, 2]}


def test_encode_names_the_type_that_is_not_serialisable():
    class Widget:
        pass
    with pytest.raises(CodecError, match=r"type .*Widget \(found in a dict\)"):
        JsonCodec().encode({"w": [Widget()]})
    with pytest.raises(CodecError, match=r"builtins.set"):
        JsonCodec().encode({1, 2})
    with pytest.raises(CodecError, match=r"builtins.bytes"):
        JsonCodec().encode(b"raw")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {(1, 2): 3}, "\ud800"])
def test_encode_refuses_what_is_not_json(value):
    with pytest.raises(CodecError, match="cannot encode"):
        JsonCodec().encode(value)


def test_encode_refuses_cycles():
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(CodecError, match="[Cc]ircular"):
        JsonCodec().encode(cyclic)


def test_decode_invalid_utf8_shows_the_bytes():
    with pytest.raises(CodecError, match=r"not UTF-8.*b'\\xff\\xfe'"):
        JsonCodec().decode(b"\xff\xfe")


def test_decode_invalid_json_shows_short_bytes():
    with pytest.raises(CodecError, match=r"not valid json: b'\{nope'") as info:
        JsonCodec().decode(b"{nope")
    long = b"[" + b"1," * 5000
    with pytest.raises(CodecError) as info:
        JsonCodec().decode(long)
    assert "10001 bytes" in str(info.value) and len(str(info.value)) < 400


@pytest.mark.parametrize("data", [b"NaN", b"[Infinity]", b"-Infinity"])
def test_decode_refuses_non_json_constants(data):
    with pytest.raises(CodecError):
        JsonCodec().decode(data)


def test_decode_deep_nesting_is_a_codec_error():
    with pytest.raises(CodecError):
        JsonCodec().decode(b"[" * 100_000 + b"]" * 100_000)


def test_decode_accepts_memoryview():
    assert JsonCodec().decode(memoryview(b'{"a":1}')) == {"a": 1}


@BOUNDED
@given(st.binary(max_size=60))
def test_decode_random_bytes_gives_value_or_codec_error(data):
    try:
        JsonCodec().decode(data)
    except CodecError:
        pass


# -- get_codec ------------------------------------------------------------------------

def test_get_codec():
    assert isinstance(get_codec("json"), JsonCodec)
    assert isinstance(get_codec("JSON"), JsonCodec)
    assert isinstance(get_codec(None), JsonCodec)
    mine = JsonCodec()
    assert get_codec(mine) is mine
    assert isinstance(mine, Codec)


def test_get_codec_unknown_name_lists_known_codecs():
    with pytest.raises(CodecError, match=r"unknown codec 'yaml'; known codecs: json") as info:
        get_codec("yaml")
    assert isinstance(info.value, ValueError)


def test_there_is_no_pickle_codec():
    with pytest.raises(CodecError, match="deliberately no pickle codec"):
        get_codec("pickle")


def test_get_codec_rejects_non_codecs():
    with pytest.raises(TypeError, match="int"):
        get_codec(3)  # type: ignore[arg-type]


def test_custom_codec_instance():
    class Raw:
        name = "raw"

        def encode(self, obj: object) -> bytes:
            return bytes(obj)  # type: ignore[call-overload]

        def decode(self, data: bytes) -> object:
            return bytes(data)

    dec = ObjectDecoder(Raw())
    assert dec.feed(encode_object(b"\x00\x01", Raw())) == [b"\x00\x01"]


# -- ObjectDecoder ---------------------------------------------------------------------

def test_encode_object_is_one_frame():
    assert encode_object({"a": 1}) == b"000000007" + b'{"a":1}'
    assert encode_object([1], "json") == b"000000003[1]"


def test_object_decoder_any_chunking():
    objs = [{"cmd": "eval", "args": [1, "x"]}, None, "é" * 100, [], 3.25]
    stream = b"".join(encode_object(o) for o in objs)
    dec = ObjectDecoder()
    out = []
    for i in range(0, len(stream), 7):
        out += dec.feed(stream[i:i + 7])
    dec.eof()
    assert out == objs and not dec.in_frame and dec.buffered == 0


def test_object_decoder_bad_frame_loses_nothing_else():
    stream = encode_frames([b"1", b"{bad", b"2", b"3"])
    dec = ObjectDecoder()
    with pytest.raises(CodecError, match="not valid json"):
        dec.feed(stream)
    assert dec.feed(b"") == [1, 2, 3]


class _Boom:
    fired: list = []

    def __reduce__(self):
        # Unpickling would call list.append on the class list: a visible side effect.
        return (_Boom.fired.append, ("unpickled!",))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_payload_is_refused_and_never_unpickled(protocol, monkeypatch):
    data = pickle.dumps(_Boom(), protocol=protocol)
    called = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: called.append(a))
    monkeypatch.setattr(pickle, "Unpickler", lambda *a, **k: called.append(a))
    dec = ObjectDecoder()
    with pytest.raises(CodecError, match="not UTF-8|not valid json"):
        dec.feed(encode_frame(data))
    assert _Boom.fired == [] and called == []
    assert dec.feed(b"") == []


def test_object_decoder_size_limit():
    dec = ObjectDecoder(max_frame_size=16)
    assert dec.max_frame_size == 16
    assert dec.feed(encode_object("0123456789abcd")) == ["0123456789abcd"]  # 16 bytes
    with pytest.raises(FrameError, match="announces 17 bytes, over max_frame_size=16"):
        dec.feed(encode_object("0123456789abcde"))


def test_object_decoder_eof_inside_frame():
    dec = ObjectDecoder()
    dec.feed(encode_object({"a": 1})[:-1])
    with pytest.raises(FrameError, match="cut short"):
        dec.eof()
