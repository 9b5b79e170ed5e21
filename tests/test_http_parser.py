"""The sans-IO request parser, both backends, no sockets."""
import pytest

from packet_gevent.errors import HTTPRequestError
from packet_gevent.http.parser import END, Limits, RequestHead, available_backends, make_parser, split_target

BACKENDS = ["httptools", "h11"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param not in available_backends():
        pytest.fail(f"{request.param} is not installed: the test extra installs both")
    return request.param


def parse(backend, data, limits=None, chunks=None):
    parser = make_parser(backend, limits)
    if chunks:
        for i in range(0, len(data), chunks):
            parser.feed(data[i:i + chunks])
    else:
        parser.feed(data)
    return list(parser.events)


def body_of(events):
    return b"".join(e for e in events if isinstance(e, bytes))


def refused(backend, data, limits=None):
    with pytest.raises(HTTPRequestError) as info:
        parse(backend, data, limits)
    return info.value.status


def test_default_backend_is_httptools():
    assert available_backends()[0] == "httptools"
    assert make_parser().backend == "httptools"


def test_simple_get(backend):
    events = parse(backend, b"GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: h\r\nX-Thing: v\r\n\r\n")
    head = events[0]
    assert isinstance(head, RequestHead)
    assert (head.method, head.target, head.version) == ("GET", b"/a/b?x=1&y=2", "1.1")
    assert (b"X-Thing", b"v") in head.headers
    assert head.keep_alive and not head.has_body
    assert events[1:] == [END]
    assert split_target(head.target) == (b"/a/b", b"x=1&y=2")


@pytest.mark.parametrize("chunk_size", [None, 1, 7])
def test_pipelined_requests_in_any_chunking(backend, chunk_size):
    data = (b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /3 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    events = parse(backend, data, chunks=chunk_size)
    heads = [e for e in events if isinstance(e, RequestHead)]
    assert [h.target for h in heads] == [b"/1", b"/2", b"/3"]
    assert [h.keep_alive for h in heads] == [True, True, False]
    assert body_of(events) == b"hello"
    assert events.count(END) == 3


def test_chunked_body_with_extension_and_trailer(backend):
    data = (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    events = parse(backend, data, chunks=3)
    assert events[0].chunked and events[0].content_length is None
    assert body_of(events) == b"hello world"
    assert events[-1] is END


def test_http10_keep_alive_rules(backend):
    assert not parse(backend, b"GET / HTTP/1.0\r\n\r\n")[0].keep_alive
    assert parse(backend, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")[0].keep_alive


def test_expect_100_continue(backend):
    head = parse(backend, b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                          b"Expect: 100-continue\r\n\r\n")[0]
    assert head.expect_continue and head.content_length == 3


@pytest.mark.parametrize("data, status", [
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"3\r\nabc\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n", 400),           # obs-fold
    (b"GET / HTTP/1.1\nHost: h\n\n", 400),                               # bare LF
    (b"GET / HTTP/1.1\r\nHost: h\nX: b\r\n\r\n", 400),                    # one bare LF
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
    (b"GET nothing HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"\x00\x01garbage\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),                                   # no Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),              # two Hosts
])
def test_smuggling_and_malformed_requests_are_refused(backend, data, status):
    assert refused(backend, data) == status


def test_limits(backend):
    limits = Limits(max_request_line=100, max_header_size=200, max_header_count=5, max_body_size=10)
    assert refused(backend, b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: h\r\n\r\n", limits) == 414
    many = b"".join(b"X-%d: v\r\n" % i for i in range(10))
    assert refused(backend, b"GET / HTTP/1.1\r\nHost: h\r\n" + many + b"\r\n", limits) == 431
    big = b"X-Big: " + b"v" * 300 + b"\r\n"
    assert refused(backend, b"GET / HTTP/1.1\r\nHost: h\r\n" + big + b"\r\n", limits) == 431
    assert refused(backend, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n", limits) == 413
    chunked = (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n")
    assert refused(backend, chunked, limits) == 413
    # Within the limits all is well.
    assert body_of(parse(backend, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n"
                                  b"0123456789", limits)) == b"0123456789"


def test_a_header_that_never_ends_is_bounded(backend):
    parser = make_parser(backend, Limits(max_request_line=100, max_header_size=1000))
    parser.feed(b"GET / HTTP/1.1\r\nHost: h\r\nX-Endless: ")
    with pytest.raises(HTTPRequestError) as info:
        for _ in range(100):
            parser.feed(b"v" * 1000)
    assert info.value.status == 431
    assert parser.in_head


def test_after_an_error_the_parser_stays_failed(backend):
    parser = make_parser(backend)
    with pytest.raises(HTTPRequestError):
        parser.feed(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n")
    with pytest.raises(HTTPRequestError):
        parser.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")


def test_partial_head_is_reported(backend):
    parser = make_parser(backend)
    parser.feed(b"GET / HTTP/1.1\r\nHo")
    assert parser.in_head and not parser.events
    parser.feed(b"st: h\r\n\r\n")
    assert not parser.in_head and parser.events[-1] is END


def test_absolute_form_target_is_split():
    assert split_target(b"http://example.com/p?q=1") == (b"/p", b"q=1")
    assert split_target(b"/p?q=1#frag") == (b"/p", b"q=1")


def test_h11_is_the_fallback_without_httptools(monkeypatch):
    from packet_gevent.http import parser as parser_module
    monkeypatch.setattr(parser_module, "httptools", None)
    assert parser_module.available_backends() == ["h11"]
    assert make_parser().backend == "h11"


# -- fuzzing: whatever the bytes and their chunking, only HTTPRequestError comes out --------

from hypothesis import given, settings, strategies as st  # noqa: E402

VALID = (b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
         b"POST /2 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
         b"PUT /3 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nxy")


def feed_all(backend, data, cuts):
    parser = make_parser(backend, Limits(max_request_line=200, max_header_size=500,
                                         max_header_count=10, max_body_size=1000))
    points = sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]
    start = 0
    try:
        for point in points:
            parser.feed(data[start:point])
            start = point
    except HTTPRequestError as exc:
        assert exc.status in (400, 408, 413, 414, 431, 501, 505)
        return None
    return list(parser.events)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_any_chunking_of_valid_requests_gives_the_same_events(backend, cuts):
    events = feed_all(backend, VALID, cuts)
    heads = [e.target for e in events if isinstance(e, RequestHead)]
    assert heads == [b"/1", b"/2", b"/3"]
    assert body_of(events) == b"abcxy" and events.count(END) == 3


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=300, deadline=None)
@given(data=st.one_of(
    st.binary(max_size=300),
    st.builds(lambda prefix, noise, suffix: prefix + noise + suffix,
              st.sampled_from([b"GET / HTTP/1.1\r\n", b"POST / HTTP/1.1\r\nHost: h\r\n",
                               b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"]),
              st.binary(max_size=200),
              st.sampled_from([b"", b"\r\n\r\n", b"\r\n", b"\n\n"]))),
    cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=6))
def test_garbage_only_ever_raises_http_request_error(backend, data, cuts):
    feed_all(backend, data, cuts)
