"""The sans-IO line parser (packet_gevent.lines): cases, limits, modes, fuzzing."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from packet_gevent.errors import LineTooLong
from packet_gevent.lines import BLOCK, LINE, RAW, LineParser

BOUNDED = settings(max_examples=200, deadline=None)


def lines_of(events):
    assert all(kind is LINE for kind, _ in events), events
    return [payload for _, payload in events]


def test_lines_split_on_newline_and_crlf_is_stripped():
    p = LineParser()
    assert lines_of(p.events(b"a\nbb\r\n\nccc")) == [b"a", b"bb", b""]
    assert p.buffered == 3
    assert lines_of(p.events(b"\n")) == [b"ccc"]
    assert p.buffered == 0


def test_a_line_cut_anywhere_comes_out_once_whole():
    p = LineParser()
    out = []
    for byte in b"hello world\r\nsecond\n":
        out += lines_of(p.events(bytes([byte])))
    assert out == [b"hello world", b"second"]


def test_custom_multibyte_delimiter_cut_across_feeds_and_cr_kept():
    p = LineParser(b"\r\n\r\n")
    assert p.events(b"one\r\n\r") == []
    assert lines_of(p.events(b"\ntwo\r\r\n\r\n")) == [b"one", b"two\r"]
    p.set_delimiter(b";")
    assert lines_of(p.events(b"x;y\n;")) == [b"x", b"y\n"]  # \r stripping only for b"\n"


def test_empty_delimiter_and_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        LineParser(b"")
    p = LineParser(max_block_size=10)
    with pytest.raises(ValueError, match="max_block_size"):
        p.set_binary_mode(11)
    with pytest.raises(ValueError):
        p.set_binary_mode(-1)


def test_line_over_the_limit_raises_after_the_lines_before_it_and_stays_failed():
    p = LineParser(max_line_length=5)
    p.feed(b"12345\nok\n123456\nlater\n")
    assert p.next_event() == (LINE, b"12345")  # exactly the limit is fine
    assert p.next_event() == (LINE, b"ok")
    with pytest.raises(LineTooLong, match="6 bytes is over max_line_length=5"):
        p.next_event()
    assert p.failed
    with pytest.raises(LineTooLong):
        p.next_event()
    with pytest.raises(LineTooLong):
        p.feed(b"x\n")


def test_the_limit_counts_the_line_without_its_crlf():
    p = LineParser(max_line_length=3)
    assert p.events(b"abc\r") == []  # "\r\n" may still come
    assert p.events(b"\nxyz\r\n") == [(LINE, b"abc"), (LINE, b"xyz")]
    with pytest.raises(LineTooLong):
        p.events(b"abcd\r\n")


def test_an_endless_line_fails_without_buffering_past_the_limit():
    p = LineParser(b"\r\n", max_line_length=100)
    assert p.events(b"a" * 100 + b"\r") == []  # the delimiter may still come
    with pytest.raises(LineTooLong, match="more than 100 bytes came without"):
        p.events(b"b")
    assert p.buffered == 0  # the buffer is dropped


def test_sized_binary_block_then_back_to_lines_in_the_same_chunk():
    p = LineParser()
    p.feed(b"DATA 5\nab\ncdNEXT\n")
    assert p.next_event() == (LINE, b"DATA 5")
    p.set_binary_mode(5)
    assert p.mode == BLOCK
    assert p.next_event() == (BLOCK, b"ab\ncd")  # the delimiter means nothing inside a block
    assert p.mode == LINE  # back before the event is handled: a handler can chain blocks
    assert p.next_event() == (LINE, b"NEXT")
    assert p.next_event() is None


def test_sized_block_waits_for_all_its_bytes_and_zero_is_an_empty_block():
    p = LineParser()
    p.set_binary_mode(4)
    assert p.events(b"ab") == []
    p.feed(b"cd\n")
    assert p.next_event() == (BLOCK, b"abcd")
    p.set_binary_mode(0)
    assert p.next_event() == (BLOCK, b"")  # needs no byte
    assert p.next_event() == (LINE, b"")   # the "\n" after the first block
    assert p.next_event() is None


def test_raw_mode_hands_out_chunks_until_line_mode():
    p = LineParser()
    p.feed(b"RAW\nxx\nyy")
    assert p.next_event() == (LINE, b"RAW")
    p.set_binary_mode()
    assert p.next_event() == (RAW, b"xx\nyy")
    assert p.events(b"zz\n") == [(RAW, b"zz\n")]
    p.set_line_mode()
    assert p.events(b"back\n") == [(LINE, b"back")]


def test_long_line_in_small_chunks_is_not_rescanned_quadratically():
    p = LineParser(max_line_length=1 << 20)
    for _ in range(20000):
        assert p.events(b"x" * 50) == []
    assert p._scan >= 20000 * 50 - 1  # searching resumes where it stopped
    assert p.events(b"\n") == [(LINE, b"x" * 1_000_000)]


# -- properties ------------------------------------------------------------------

line_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").rstrip(b"\r"))


@BOUNDED
@given(lines=st.lists(line_bytes, max_size=20), data=st.data())
def test_any_chunking_gives_back_the_same_lines(lines, data):
    stream = b"".join(line + data.draw(st.sampled_from([b"\n", b"\r\n"])) for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    p = LineParser()
    out, prev = [], 0
    for cut in cuts + [len(stream)]:
        out += lines_of(p.events(stream[prev:cut]))
        prev = cut
    assert out == lines and p.buffered == 0


@BOUNDED
@given(items=st.lists(st.one_of(line_bytes.map(lambda b: (LINE, b)),
                                st.binary(max_size=60).map(lambda b: (BLOCK, b))), max_size=15),
       data=st.data())
def test_lines_and_announced_blocks_survive_any_chunking(items, data):
    # The protocol: "BLOCK <n>\n" then n raw bytes; any other line is a line.
    stream = b"".join(b"L" + payload + b"\n" if kind is LINE else b"BLOCK %d\n" % len(payload) + payload
                      for kind, payload in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    p = LineParser()
    out, prev = [], 0
    for cut in cuts + [len(stream)]:
        p.feed(stream[prev:cut])
        prev = cut
        while (event := p.next_event()) is not None:
            kind, payload = event
            if kind is LINE and payload.startswith(b"BLOCK "):
                p.set_binary_mode(int(payload[6:]))
            elif kind is LINE:
                out.append((LINE, payload[1:]))
            else:
                out.append(event)
    assert out == items and p.buffered == 0


@BOUNDED
@given(chunks=st.lists(st.binary(max_size=64), max_size=10), limit=st.integers(0, 50),
       delimiter=st.sampled_from([b"\n", b"\r\n", b"\x00", b"END"]))
def test_random_bytes_give_bounded_lines_or_line_too_long_only(chunks, limit, delimiter):
    p = LineParser(delimiter, max_line_length=limit)
    for chunk in chunks:
        try:
            for kind, line in p.events(chunk):
                assert kind is LINE and type(line) is bytes and len(line) <= limit
                assert delimiter not in line
        except LineTooLong:
            assert p.failed
            return
        # Never more buffered than a line could be: the limit plus a partial delimiter.
        assert p.buffered <= limit + len(delimiter) - 1 + (1 if delimiter == b"\n" else 0)


def test_take_partial_block_returns_what_came_of_a_sized_block_once():
    parser = LineParser()
    assert parser.take_partial_block() is None  # line mode: nothing pending
    parser.set_binary_mode(10)
    assert parser.take_partial_block() is None  # sized, nothing arrived yet
    parser.feed(b"abcd")
    assert parser.next_event() is None
    assert parser.take_partial_block() == b"abcd"
    assert parser.mode == "line" and parser.buffered == 0
    assert parser.take_partial_block() is None
    parser.feed(b"x\n")
    assert parser.next_event() == ("line", b"x")
    parser.set_binary_mode(None)  # raw: every byte is handed out as it comes, nothing is held
    parser.feed(b"raw")
    assert parser.next_event() == ("raw", b"raw")
    assert parser.take_partial_block() is None
