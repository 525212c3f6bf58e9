"""dengine.config.addresses: the one host:port grammar.

Rules: every address is accepted or refused the same way by config
validation, the peer transport, the server and the clients (they all call
this module); a refusal names the problem in plain words.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dengine import config
from dengine.config import Config
from dengine.config.addresses import (
    WILDCARD_HOSTS,
    format_address,
    is_wildcard,
    parse_address,
    split_address,
)
from dengine.errors import ConfigError, InvalidArgument
from dengine.transport import peer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7001", ("127.0.0.1", 7001)),
        ("localhost:1", ("localhost", 1)),
        ("node-1.example.com:9081", ("node-1.example.com", 9081)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
        ("[::1]:7001", ("::1", 7001)),
        ("[::]:7001", ("::", 7001)),
        ("[2001:db8::1]:443", ("2001:db8::1", 443)),
        ("[::ffff:10.0.0.1]:80", ("::ffff:10.0.0.1", 80)),
        ("localhost:0", ("localhost", 0)),
        ("h:007", ("h", 7)),
    ],
)
def test_valid_forms(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected
    assert split_address(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        # IPv6 must be bracketed, with the port outside the brackets
        ("::1:7001", "an IPv6 host must be written '[host]:port'"),
        ("[::1]7001", "an IPv6 host must be written '[host]:port'"),
        ("[::1", "an IPv6 host must be written '[host]:port'"),
        ("[::1]", "an IPv6 host must be written '[host]:port'"),
        ("[not-v6]:1", "'not-v6' is not an IPv6 address"),
        # a missing port
        ("localhost", "no port was found"),
        ("localhost:", "no port was found"),
        ("[::1]:", "no port was found"),
        # ports out of range or not numbers
        ("h:65536", "port 65536 is larger than 65535"),
        ("h:99999999999999999999", "is larger than 65535"),
        ("h:http", "port 'http' is not a number"),
        ("h:-1", "port '-1' is not a number"),
        ("h:+1", "port '+1' is not a number"),
        ("h:\u0661", "is not a number"),  # an Arabic-Indic digit is not a port
        # an empty host
        (":7001", "no host was given"),
        ("[]:7001", "no host was given"),
        # a URL is not an address
        ("http://example.com:80", "it starts with a scheme ('http://'); write only 'host:port'"),
        ("tcp://[::1]:7001", "it starts with a scheme ('tcp://')"),
        ("user@h:1", "'user@h' is not a valid host name"),
        ("h/x:1", "'h/x' is not a valid host name"),
        ("a b:1", "'a b' is not a valid host name"),
        # not a string, empty, padded
        ("", "it is empty"),
        ("   ", "it is empty"),
        (" h:1", "it has spaces around it"),
        ("h:1\n", "it has spaces around it"),
        (7001, "it is int, not a string"),
        (None, "it is NoneType, not a string"),
        (("h", 1), "it is tuple, not a string"),
    ],
)
def test_refusals_name_the_problem(text: Any, problem: str) -> None:
    result = split_address(text)
    assert isinstance(result, str) and problem in result, result
    with pytest.raises(InvalidArgument) as excinfo:
        parse_address(text)
    assert excinfo.value.message == f"address {text!r} must be 'host:port': {result}"


def test_port_zero_is_for_listening_only() -> None:
    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_address("127.0.0.1:0", allow_port_zero=True) == ("127.0.0.1", 0)
    with pytest.raises(InvalidArgument, match="needs a real port, not 0"):
        parse_address("127.0.0.1:0", allow_port_zero=False)
    assert parse_address("127.0.0.1:1", allow_port_zero=False) == ("127.0.0.1", 1)
    # a malformed address is refused for what it is, not for its port
    with pytest.raises(InvalidArgument, match="no host was given"):
        parse_address(":0", allow_port_zero=False)


def test_wildcards() -> None:
    assert {"0.0.0.0", "::"} <= WILDCARD_HOSTS
    assert is_wildcard("0.0.0.0:7001") and is_wildcard("[::]:7001")
    assert not is_wildcard("127.0.0.1:7001")
    assert not is_wildcard("0.0.0.0")  # not an address at all
    assert not is_wildcard(None)


@pytest.mark.parametrize(
    ("host", "port", "text"),
    [("127.0.0.1", 7001, "127.0.0.1:7001"), ("::1", 7001, "[::1]:7001"), ("h", 0, "h:0")],
)
def test_format_address(host: str, port: int, text: str) -> None:
    assert format_address(host, port) == text


_names = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?){0,3}", fullmatch=True)
_v4 = st.ip_addresses(v=4).map(str)
_v6 = st.ip_addresses(v=6).map(lambda a: str(ipaddress.IPv6Address(a)))


@given(host=st.one_of(_names, _v4, _v6), port=st.integers(0, 65535))
def test_format_and_parse_are_inverses(host: str, port: int) -> None:
    assert parse_address(format_address(host, port)) == (host, port)


@given(st.one_of(st.text(max_size=30), st.from_regex(r"\[?[0-9a-f:.\[\]]{0,12}\]?:?[0-9]{0,7}", fullmatch=True)))
def test_split_address_never_raises_and_agrees_with_parse(text: str) -> None:
    result = split_address(text)
    if isinstance(result, tuple):
        host, port = result
        assert 0 <= port <= 65535 and host
        assert parse_address(text) == result
    else:
        with pytest.raises(InvalidArgument):
            parse_address(text)


def test_one_grammar_for_config_and_transport() -> None:
    assert config.parse_address is parse_address
    assert config.format_address is format_address
    assert peer.parse_address is parse_address
    assert peer.format_address is format_address
    # config validation words its sentence with the same phrase
    with pytest.raises(ConfigError) as excinfo:
        Config(client_address="http://h:1")
    assert excinfo.value.problems == [
        f"node.client_address must be 'host:port': {split_address('http://h:1')} (got 'http://h:1')."
    ]
