"""Tests for packet_gevent.framing: Packet's BinParser cases, limits, EOF, properties."""
from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given, settings, strategies as st

from packet_gevent.errors import FrameError
from packet_gevent.framing import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    MAX_FRAME_LIMIT,
    BinParser,
    FrameDecoder,
    encode_frame,
    encode_frames,
    frame_header,
)

BOUNDED = settings(max_examples=200, deadline=None)


# -- encoding ----------------------------------------------------------------

def test_encode_frame_is_nine_digit_length_then_payload():
    assert encode_frame(b"hello") == b"000000005hello"
    assert encode_frame(b"") == b"000000000"
    assert frame_header(123) == b"000000123"
    assert len(frame_header(MAX_FRAME_LIMIT)) == HEADER_SIZE


def test_encode_accepts_bytes_like():
    assert encode_frame(bytearray(b"ab")) == b"000000002ab"
    assert encode_frame(memoryview(b"abc")) == b"000000003abc"
    # nbytes, not items: an int array of 2 items is 8 bytes
    import array
    assert encode_frame(array.array("i", [1, 2]))[:HEADER_SIZE] == b"000000008"


def test_encode_frames_coalesces():
    assert encode_frames([b"a", b"", b"bc"]) == b"000000001a000000000000000002bc"
    assert encode_frames([]) == b""


def test_encode_over_limit_raises():
    with pytest.raises(FrameError, match="1000000000 bytes"):
        frame_header(MAX_FRAME_LIMIT + 1)
    with pytest.raises(FrameError):
        frame_header(-1)
    with pytest.raises(FrameError, match="limit is 3 bytes"):
        encode_frame(b"abcd", max_frame_size=3)
    with pytest.raises(FrameError):
        encode_frames([b"ab", b"abcd"], max_frame_size=3)


# -- Packet's BinParser cases ------------------------------------------------

def test_complete_frame_in_one_feed():
    p = BinParser()
    assert p.extract(encode_frame(b"hello world")) == [b"hello world"]
    assert not p.in_frame and p.buffered == 0


def test_frame_split_over_many_feeds():
    p = BinParser()
    data = encode_frame(b"hello world")
    assert p.extract(data[:4]) == []
    assert p.in_frame and p.buffered == 4
    assert p.extract(data[4:12]) == []
    assert p.in_frame and p.buffered == 3  # header consumed, 3 payload bytes held
    assert p.extract(data[12:]) == [b"hello world"]
    assert not p.in_frame


def test_frame_split_byte_by_byte():
    p = BinParser()
    data = encode_frame(b"byte by byte")
    out = []
    for i in range(len(data)):
        out += p.extract(data[i:i + 1])
    assert out == [b"byte by byte"]


def test_several_frames_in_one_feed():
    p = BinParser()
    payloads = [b"one", b"two", b"", b"three" * 100]
    assert p.extract(encode_frames(payloads)) == payloads


def test_frame_and_a_half_then_the_rest():
    p = BinParser()
    data = encode_frames([b"first", b"second frame"])
    cut = len(encode_frame(b"first")) + 12
    assert p.extract(data[:cut]) == [b"first"]
    assert p.in_frame
    assert p.extract(data[cut:]) == [b"second frame"]


def test_corrupt_header_raises_and_yields_nothing():
    p = BinParser()
    seen = []
    with pytest.raises(FrameError, match=r"bad frame header b'00000abcd'") as info:
        p.extract(b"00000abcdpayload", seen.append)
    assert seen == []
    assert "9 ASCII digits" in str(info.value) and "close the connection" in str(info.value)


@pytest.mark.parametrize("header", [b"+00000001", b" 00000001", b"0000_0001", b"-00000001",
                                    b"\xd9\xa000000001"[:9], b"00000001\n"])
def test_headers_int_would_accept_are_rejected(header):
    with pytest.raises(FrameError):
        FrameDecoder().feed(header + b"x" * 20)


def test_corrupt_header_split_across_feeds():
    d = FrameDecoder()
    assert d.feed(b"0000") == []
    with pytest.raises(FrameError, match="b'0000zzzzz'"):
        d.feed(b"zzzzz and more")


def test_frames_before_a_corrupt_header_in_the_same_chunk_are_not_yielded():
    d = FrameDecoder()
    with pytest.raises(FrameError):
        d.feed(encode_frame(b"good") + b"garbage!!" + b"x")


def test_bad_header_message_truncates_long_context():
    with pytest.raises(FrameError) as info:
        FrameDecoder().feed(b"X" * 1000)
    msg = str(info.value)
    assert "..." in msg and len(msg) < 400


def test_extract_with_callback_calls_per_frame_and_returns_none():
    p = BinParser()
    seen = []
    assert p.extract(encode_frames([b"a", b"b"]) + b"0000", seen.append) is None
    assert seen == [b"a", b"b"]
    assert p.extract(b"00001c", seen.append) is None
    assert seen == [b"a", b"b", b"c"]


# -- limits, zero length, EOF, error state -------------------------------------

def test_default_limit_is_64_mib():
    assert FrameDecoder().max_frame_size == DEFAULT_MAX_FRAME_SIZE == 64 * 1024 * 1024


def test_oversize_raises_before_payload_is_buffered():
    d = FrameDecoder(max_frame_size=10)
    with pytest.raises(FrameError, match=r"announces 11 bytes, over max_frame_size=10"):
        d.feed(b"000000011" + b"x" * 5)
    assert d.buffered == 0 and d.payload_buffer_remaining() is None


def test_oversize_in_header_completed_by_later_feed():
    d = FrameDecoder(max_frame_size=10)
    d.feed(b"00000")
    with pytest.raises(FrameError, match="raise max_frame_size"):
        d.feed(b"0011")
    assert d.buffered == 0


def test_frame_exactly_at_limit_is_accepted():
    d = FrameDecoder(max_frame_size=10)
    assert d.feed(encode_frame(b"0123456789")) == [b"0123456789"]


def test_invalid_max_frame_size():
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_size=MAX_FRAME_LIMIT + 1)
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_size=-1)


def test_zero_length_frames():
    d = FrameDecoder()
    assert d.feed(b"000000000" * 3) == [b"", b"", b""]
    assert d.feed(b"0000") == [] and d.feed(b"00000") == [b""]
    assert not d.in_frame


def test_clean_eof_between_frames():
    d = FrameDecoder()
    d.feed(encode_frame(b"x"))
    d.eof()  # no error
    FrameDecoder().eof()


def test_eof_inside_header():
    d = FrameDecoder()
    d.feed(b"0000")
    with pytest.raises(FrameError, match=r"cut short.*after 4 of 9 header bytes"):
        d.eof()


def test_eof_inside_payload():
    d = FrameDecoder()
    d.feed(encode_frame(b"0123456789")[:12])
    with pytest.raises(FrameError, match=r"cut short.*after 3 of 10 payload bytes"):
        d.eof()


def test_error_state_sticks():
    d = FrameDecoder()
    with pytest.raises(FrameError):
        d.feed(b"notdigits")
    assert d.failed
    for _ in range(3):
        with pytest.raises(FrameError, match="already failed.*bad frame header"):
            d.feed(encode_frame(b"fine"))
    assert d.payload_buffer_remaining() is None


def test_feed_accepts_bytearray_and_memoryview_and_copies():
    d = FrameDecoder()
    chunk = bytearray(encode_frame(b"abc") + encode_frame(b"defg")[:6])
    assert d.feed(chunk) == [b"abc"]
    chunk[:] = b"Z" * len(chunk)  # caller reuses its buffer: nothing we keep changes
    out = d.feed(memoryview(encode_frame(b"defg")[6:]))
    assert out == [b"defg"] and type(out[0]) is bytes


def test_empty_feed():
    d = FrameDecoder()
    assert d.feed(b"") == []
    d.feed(b"00")
    assert d.feed(b"") == [] and d.buffered == 2


# -- receiving straight into the payload buffer ------------------------------------

def test_payload_buffer_remaining_and_commit():
    payload = bytes(range(256)) * 40
    data = encode_frame(payload) + encode_frame(b"next")
    d = FrameDecoder()
    assert d.payload_buffer_remaining() is None
    assert d.feed(data[:100]) == []
    pos, out = 100, []
    while True:
        view = d.payload_buffer_remaining()
        if view is None:
            break
        k = min(len(view), 1000)
        view[:k] = data[pos:pos + k]
        pos += k
        out += d.commit(k)
    assert out == [payload]
    assert d.feed(data[pos:]) == [b"next"]


def test_commit_checks_its_argument():
    d = FrameDecoder()
    with pytest.raises(ValueError, match="without a payload"):
        d.commit(1)
    d.feed(b"000000005ab")
    with pytest.raises(ValueError, match="outside 0..3"):
        d.commit(4)
    assert d.commit(0) == []
    d.payload_buffer_remaining()[:3] = b"cde"
    assert d.commit(3) == [b"abcde"]


def test_payload_missing_counts_what_the_current_payload_lacks():
    d = FrameDecoder()
    assert d.payload_missing == 0
    d.feed(b"0000000")
    assert d.payload_missing == 0  # inside the header, not the payload yet
    d.feed(b"10abc")
    assert d.payload_missing == 7
    assert d.commit(0) == [] and d.payload_missing == 7
    d.feed(b"defghij000")
    assert d.payload_missing == 0 and d.in_frame


def _received_into(d: FrameDecoder, payload: bytes, *, keep_view: bool):
    """Deliver ``payload`` (header already fed) through payload_buffer_remaining/commit."""
    view = d.payload_buffer_remaining()
    view[:] = payload
    if not keep_view:
        view.release()
    frames = d.commit(len(payload))
    return frames, view


def test_a_payload_received_into_the_buffer_is_handed_out_without_a_copy():
    size = 4 * 1024 * 1024
    payload = bytes(range(256)) * (size // 256)
    d = FrameDecoder()
    d.feed(frame_header(size))
    tracemalloc.start()
    try:
        frames, _ = _received_into(d, payload, keep_view=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert frames == [payload] and type(frames[0]) is bytes
    # The payload's bytes object was allocated before tracing; a copy would
    # allocate another 4 MiB.
    assert peak < size // 4, f"the payload was copied on the way out (peak {peak} bytes)"


def test_a_view_still_alive_at_commit_cannot_change_the_frame_handed_out():
    d = FrameDecoder()
    d.feed(frame_header(100_000))
    payload = b"p" * 100_000
    frames, view = _received_into(d, payload, keep_view=True)
    view[:5] = b"XXXXX"  # the stale view writes into the decoder's old buffer only
    view.release()
    assert frames == [payload]
    assert d.feed(encode_frame(b"next")) == [b"next"]


def test_big_frame_in_64k_chunks():
    payload = bytes(range(256)) * (4 * 1024 * 4)  # 4 MiB
    data = encode_frame(payload)
    d = FrameDecoder()
    out = []
    for i in range(0, len(data), 65536):
        out += d.feed(data[i:i + 65536])
    assert out == [payload]


# -- properties ------------------------------------------------------------------

@BOUNDED
@given(payloads=st.lists(st.binary(max_size=300), max_size=20), data=st.data())
def test_any_chunking_gives_back_the_same_payloads(payloads, data):
    stream = encode_frames(payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    d = BinParser()
    out = []
    prev = 0
    for cut in cuts + [len(stream)]:
        out += d.feed(stream[prev:cut])
        prev = cut
    d.eof()
    assert out == payloads
    assert not d.in_frame and d.buffered == 0


@BOUNDED
@given(chunks=st.lists(st.binary(max_size=64), max_size=10), limit=st.integers(0, 200))
def test_random_bytes_give_frames_or_frame_error_only(chunks, limit):
    d = FrameDecoder(max_frame_size=limit)
    for chunk in chunks:
        try:
            frames = d.feed(chunk)
        except FrameError:
            assert d.failed
            continue
        assert all(type(f) is bytes and len(f) <= limit for f in frames)
    try:
        d.eof()
    except FrameError:
        pass


@BOUNDED
@given(st.binary(max_size=40).map(lambda b: encode_frame(b"ok") + b"0" * 5 + b))
def test_fuzz_after_valid_prefix(data):
    d = FrameDecoder(max_frame_size=1000)
    try:
        frames = d.feed(data)
    except FrameError:
        return
    assert frames[0] == b"ok"
