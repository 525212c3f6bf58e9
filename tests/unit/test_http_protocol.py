"""dengine.http.protocol (the strict request parser and response writer)
and the quantile of dengine.http.status, checked without any socket."""

from __future__ import annotations

import math
from bisect import bisect_left

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dengine.http.protocol import RequestError, find_head_end, parse_request, render_response
from dengine.http.status import quantile
from dengine.stats import LATENCY_BUCKETS, Histogram


def test_a_plain_get() -> None:
    request = parse_request(b"GET /status.json?x=1&y HTTP/1.1\r\nHost: h:1\r\nAccept: */*\r\n\r\n")
    assert (request.method, request.path, request.query, request.version) == ("GET", "/status.json", "x=1&y", "HTTP/1.1")
    assert request.header("HOST") == "h:1" and request.header("accept") == "*/*" and request.header("x") is None


def test_http_1_0_needs_no_host_and_bare_lf_is_accepted() -> None:
    assert parse_request(b"HEAD / HTTP/1.0\n\n").method == "HEAD"
    assert parse_request(b"GET /health HTTP/1.1\nHost: x\n\n").path == "/health"
    assert parse_request(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").path == "/"


@pytest.mark.parametrize(
    ("head", "status", "words"),
    [
        (b"POST / HTTP/1.1\r\nHost: x\r\n\r\n", 405, "use GET"),
        (b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n", 405, "use GET"),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505, "HTTP/2.0"),
        (b"GET / HTTX/1.1\r\nHost: x\r\n\r\n", 400, "not an HTTP version"),
        (b"GET / HTTP/1.1\r\n\r\n", 400, "Host"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "Host"),
        (b"GET http://evil/ HTTP/1.1\r\nHost: x\r\n\r\n", 400, "path starting with '/'"),
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400, "path"),
        (b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400, "request line"),
        (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "request line"),
        (b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "token"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400, "folding"),
        (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400, "Name: value"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", 400, "Name: value"),
        (b"GET / HTTP/1.1\r\nHost: x\x01y\r\n\r\n", 400, "control character"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n", 400, "no request body"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "no request body"),
        (b"\r\n\r\n", 400, "empty request"),
    ],
)
def test_refusals_say_why(head: bytes, status: int, words: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(head)
    assert info.value.status == status and words in info.value.reason
    assert info.value.allow == (status == 405)


def test_find_head_end() -> None:
    assert find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n") is None
    assert find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest") == len(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert find_head_end(b"GET / HTTP/1.0\n\nrest") == len(b"GET / HTTP/1.0\n\n")


def test_render_response() -> None:
    data = render_response(503, b'{"health":"false"}', "application/json", headers=[("Cache-Control", "no-store")])
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 503 Service Unavailable",
        b"Content-Type: application/json",
        b"Content-Length: 18",
        b"Connection: close",
        b"X-Content-Type-Options: nosniff",
        b"Cache-Control: no-store",
    ]
    assert body == b'{"health":"false"}'
    assert render_response(200, b"abc", "text/plain", head_only=True).endswith(b"Content-Length: 3\r\n"
                                                                              b"Connection: close\r\n"
                                                                              b"X-Content-Type-Options: nosniff\r\n\r\n")


# -- quantile against a sorted-list oracle ------------------------------------------------


@given(
    values=st.lists(st.floats(min_value=0.00001, max_value=20, allow_nan=False), min_size=1, max_size=300),
    q=st.sampled_from([0.5, 0.9, 0.99, 1.0]),
)
def test_quantile_lies_in_the_bucket_of_the_exact_one(values: list[float], q: float) -> None:
    hist = Histogram(LATENCY_BUCKETS)
    for v in values:
        hist.observe(v)
    got = quantile(q, None, hist.snapshot())
    assert got is not None
    exact = sorted(values)[max(0, math.ceil(q * len(values)) - 1)]
    k = bisect_left(LATENCY_BUCKETS, exact)
    if k == len(LATENCY_BUCKETS):  # the +Inf bucket reports the largest bound
        assert got == LATENCY_BUCKETS[-1]
    else:
        lower = LATENCY_BUCKETS[k - 1] if k else 0.0
        assert lower <= got <= LATENCY_BUCKETS[k]


def test_quantile_of_the_difference_of_two_snapshots() -> None:
    hist = Histogram(LATENCY_BUCKETS)
    for _ in range(100):
        hist.observe(5.0)  # slow, long ago
    before = hist.snapshot()
    assert quantile(0.99, before, hist.snapshot()) is None  # nothing since
    for _ in range(100):
        hist.observe(0.00015)
    p99 = quantile(0.99, before, hist.snapshot())
    assert p99 is not None and 0.0001 <= p99 <= 0.0002
