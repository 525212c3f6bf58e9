"""The client protocol codec: round trips, the op table, untrusted input, and
the worked byte-level example of docs/protocol.md (checked against the real
encoder)."""

from __future__ import annotations

import pathlib
import re

import attrs
import pytest

from dengine.api import LeaderInfo, Member, Status, WatchEvent, WatchEventType
from dengine.codec import pack
from dengine.errors import (
    ErrorCode,
    InvalidArgument,
    MalformedMessage,
    NotLeader,
    ProtocolError,
    Timeout,
    UnknownOperation,
)
from dengine.transport.client_protocol import (
    OPS,
    STREAM_OPS,
    WRITE_OPS,
    RequestError,
    decode_leader,
    decode_request,
    decode_response,
    decode_status,
    decode_watch_item,
    encode_error,
    encode_leader,
    encode_request,
    encode_response,
    encode_status,
    encode_watch_event,
    error_from_map,
)
from dengine.transport.framing import encode_frame
from dengine.transport.handshake import Hello, Welcome, encode_hello, encode_reply

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _doc_hex_blocks() -> list[bytes]:
    text = DOC.read_text()
    blocks = re.findall(r"```\n((?:[0-9a-f]{2}[ \n])+)```", text)
    return [bytes.fromhex(b.replace("\n", " ")) for b in blocks]


def test_doc_worked_example_matches_the_encoder() -> None:
    expected = [
        encode_frame(encode_hello(Hello(protocol_version=1, cluster_id="dengine", node_id=None, kind="client"))),
        encode_frame(encode_reply(Welcome(1))),
        encode_frame(encode_request(1, "put", {"key": b"k", "value": b"v"})),
        encode_frame(encode_response(1, "ok", {"revision": 3})),
        encode_frame(encode_response(2, "error", encode_error(
            NotLeader("not leader", leader_id=2, leader_address="peer:7002"), leader_address="127.0.0.1:9082"))),
    ]
    assert _doc_hex_blocks() == expected


def test_op_table() -> None:
    assert set(OPS) == {"put", "get", "get_many", "delete", "cas", "scan_prefix", "watch", "cancel",
                        "status", "members", "leader", "watch_leader", "add_member", "promote_member",
                        "remove_member", "update_member", "watch_members", "snapshot", "scan_range", "txn",
                        "lease_grant", "lease_revoke", "lease_keep_alive", "lease_ttl", "lease_list"}
    assert STREAM_OPS == {"watch", "watch_leader", "watch_members", "snapshot"}
    # Membership changes go to the leader like writes (docs/protocol.md §4).
    assert WRITE_OPS == {"put", "delete", "cas", "add_member", "promote_member", "remove_member", "update_member",
                         "txn", "lease_grant", "lease_revoke"}


@pytest.mark.parametrize(
    ("op", "args", "expected"),
    [
        ("put", {"key": b"k", "value": b"", "ttl_ms": 5}, {"key": b"k", "value": b"", "ttl_ms": 5, "lease": None,
                                                         "timeout_ms": None}),
        ("put", {"key": b"k", "value": b"", "lease": 9}, {"key": b"k", "value": b"", "ttl_ms": None, "lease": 9,
                                                        "timeout_ms": None}),
        ("lease_keep_alive", {"id": 3}, {"id": 3, "timeout_ms": None}),
        ("txn", {"compare": [], "success": [{"op": "get", "key": b"k"}]},
         {"compare": [], "success": [{"op": "get", "key": b"k"}], "failure": None, "timeout_ms": None}),
        ("get", {"key": b"k", "consistency": "lease"}, {"key": b"k", "consistency": "lease", "timeout_ms": None}),
        ("get_many", {"keys": [b"a", b"b"]}, {"keys": [b"a", b"b"], "consistency": None, "timeout_ms": None}),
        ("cas", {"key": b"k", "new": b"n"}, {"key": b"k", "expected": None, "new": b"n", "ttl_ms": None,
                                             "timeout_ms": None}),
        ("watch", {"key": b"/p/", "prefix": True}, {"key": b"/p/", "prefix": True, "prev_kv": False,
                                                    "start_revision": None}),
        ("cancel", {"request_id": 7}, {"request_id": 7}),
        ("status", {}, {"timeout_ms": None}),
    ],
)
def test_request_round_trip(op: str, args: dict, expected: dict) -> None:
    req = decode_request(encode_request(42, op, args))
    assert (req.id, req.op) == (42, op)
    if "consistency" in expected and expected["consistency"] is not None:
        assert req.args["consistency"].value == expected.pop("consistency")
        req.args.pop("consistency")
    assert req.args == expected


@pytest.mark.parametrize(
    ("body", "error", "has_id"),
    [
        (b"\xc1", MalformedMessage, False),  # not msgpack
        (pack({"a": 1}), MalformedMessage, False),
        (pack([1, "get"]), MalformedMessage, False),
        (pack([-1, "get", {}]), MalformedMessage, False),
        (pack(["x", "get", {}]), MalformedMessage, False),
        (pack([1, "frobnicate", {}]), UnknownOperation, True),
        (pack([1, 5, {}]), MalformedMessage, True),
        (pack([1, "get", []]), MalformedMessage, True),
        (pack([1, "get", {}]), MalformedMessage, True),  # missing key
        (pack([1, "get", {"key": "text"}]), MalformedMessage, True),
        (pack([1, "get", {"key": b"k", "extra": 1}]), MalformedMessage, True),
        (pack([1, "get", {"key": b"k", "consistency": "strong"}]), MalformedMessage, True),
        (pack([1, "put", {"key": b"k", "value": b"v", "ttl_ms": -5}]), MalformedMessage, True),
        (pack([1, "watch", {"key": b"k", "prefix": 1}]), MalformedMessage, True),
        (pack([1, "get_many", {"keys": [b"a", 2]}]), MalformedMessage, True),
    ],
)
def test_bad_requests(body: bytes, error: type, has_id: bool) -> None:
    with pytest.raises(RequestError) as info:
        decode_request(body)
    assert isinstance(info.value.error, error)
    assert (info.value.request_id is not None) == has_id


def test_error_maps_round_trip() -> None:
    err = error_from_map(encode_error(NotLeader("x", leader_id=3, leader_address="p"), leader_address="c:1"))
    assert isinstance(err, NotLeader) and (err.leader_id, err.leader_address) == (3, "c:1")
    assert isinstance(error_from_map(encode_error(Timeout("slow"))), Timeout)
    assert isinstance(error_from_map(encode_error(InvalidArgument("bad"))), InvalidArgument)
    unknown = error_from_map({"code": 9999, "message": "future", "leader_id": None, "leader_address": None})
    assert isinstance(unknown, ProtocolError) and "9999" in str(unknown)
    with pytest.raises(MalformedMessage):
        error_from_map({"code": "x", "message": "m"})


def test_responses_and_results() -> None:
    resp = decode_response(encode_response(5, "item", {"a": 1}))
    assert (resp.id, resp.status, resp.final) == (5, "item", False)
    assert decode_response(encode_response(None, "error", {})).id is None
    for bad in (pack([1, "maybe", {}]), pack([None, "ok", {}]), pack([1, "ok", []]), pack("x")):
        with pytest.raises(MalformedMessage):
            decode_response(bad)
    ev = WatchEvent(WatchEventType.PUT, b"k", b"v", b"old", 9)
    assert decode_watch_item(encode_watch_event(ev)) == ev
    assert decode_watch_item({"created": True, "start_revision": 4}) == 4
    with pytest.raises(MalformedMessage):
        decode_watch_item({"type": 99, "key": b"", "value": b"", "prev_value": None, "revision": 1, "error": 0})
    st = Status(1, "leader", 2, 1, 5, 5, (Member(1, "a:1", "c:1", False),), 0)
    assert decode_status(encode_status(st)) == st
    faced = attrs.evolve(st, etcd_urls={"grpc": ["http://h:2379"], "gateway": ["http://h:2378"]})
    assert decode_status(encode_status(faced)) == faced
    for bad_urls in ({"grpc": "http://h:2379"}, {"grpc": [1]}, ["http://h:2379"]):
        with pytest.raises(MalformedMessage, match="etcd_urls"):
            decode_status({**encode_status(st), "etcd_urls": bad_urls})
    assert decode_leader(encode_leader(LeaderInfo(None, 3), None)) == (LeaderInfo(None, 3), None)
    assert ErrorCode.UNKNOWN_OPERATION == 4003


# --- transactions, leases, key metadata on the wire ---------------------------------

from dengine.api import Compare, KeyValue, LeaseStatus, Op, ScanResult, TxnResult  # noqa: E402
from dengine.errors import InvalidArgument as _InvalidArgument  # noqa: E402
from dengine.transport import client_protocol as cp  # noqa: E402


def test_txn_request_and_result_round_trip() -> None:
    compare = [Compare.value(b"/a") == b"1", Compare.mod_revision(b"/b") > 3, Compare.lease(b"/c") != 0]
    success = [Op.put(b"/a", b"2", lease=5), Op.delete(b"/b"), Op.delete_prefix(b"/p/"), Op.get(b"/a"),
               Op.scan_range(b"/a", b"/z", limit=2)]
    failure = [Op.scan(b"/", limit=1)]
    wire = cp.encode_txn_request(compare, success, failure)
    request = cp.decode_request(cp.encode_request(1, "txn", wire))
    assert cp.decode_txn_request(request.args) == (compare, success, failure)
    kv = KeyValue(b"/a", b"2", 9, 4, 2, 5)
    result = TxnResult(True, 9, [9, 1, 3, kv, ScanResult([kv], 9, more=True, count=4)])
    body = cp.decode_response(cp.encode_response(1, "ok", cp.encode_txn_result(result, success))).body
    assert cp.decode_txn_result(body, success, failure) == result
    failed = TxnResult(False, 10, [ScanResult([], 10)])
    assert cp.decode_txn_result(cp.encode_txn_result(failed, failure), success, failure) == failed


@pytest.mark.parametrize(
    ("args", "error", "needle"),
    [
        ({"compare": ["x"]}, MalformedMessage, "compare[0] must be a map"),
        ({"compare": [{"target": "size", "key": b"k", "op": "==", "value": 1}]}, _InvalidArgument, "unknown target"),
        ({"compare": [{"target": "version", "key": b"k", "op": "<=", "value": 1}]}, _InvalidArgument, "unknown operator"),
        ({"compare": [{"target": "value", "key": b"k", "op": "==", "value": 1}]}, _InvalidArgument, "needs bytes"),
        ({"compare": [{"target": "version", "key": b"k", "op": "==", "value": 1, "x": 1}]}, MalformedMessage,
         "has no field 'x'"),
        ({"success": [{"op": "rename", "key": b"k"}]}, _InvalidArgument, "unknown op 'rename'"),
        ({"success": [{"op": "put", "key": "k"}]}, MalformedMessage, "'key' must be bytes"),
        ({"failure": [{"op": "get", "key": b"k", "lease": -1}]}, MalformedMessage, "'lease'"),
    ],
)
def test_bad_txn_requests_are_refused_by_name(args: dict, error: type, needle: str) -> None:
    with pytest.raises(error) as info:
        cp.decode_txn_request(args)
    assert needle in str(info.value)


def test_scan_answers_carry_key_metadata_and_old_servers_still_decode() -> None:
    kv = KeyValue(b"/a", b"1", 7, 3, 2, 4)
    assert cp.decode_scan(cp.encode_scan(ScanResult([kv], 8, count=1))) == ScanResult([kv], 8, count=1)
    old = cp.decode_scan({"entries": [[b"/a", b"1"]], "revision": 8})
    assert old.entries == [KeyValue(b"/a", b"1")] and old.count == 1
    with pytest.raises(MalformedMessage, match="meta"):
        cp.decode_scan({"entries": [[b"/a", b"1"]], "meta": [], "revision": 8})
    with pytest.raises(MalformedMessage, match=r"meta\[0\]"):
        cp.decode_scan({"entries": [[b"/a", b"1"]], "meta": [[1, 2, 3]], "revision": 8})


def test_lease_answers_and_watch_metadata_round_trip() -> None:
    status = LeaseStatus(5, 10.0, 7.5, (b"/a",))
    assert cp.decode_lease_status(cp.encode_lease_status(status)) == status
    assert cp.decode_leases({"leases": [[1, 1500]]}) == [dengine_lease(1, 1.5)]
    with pytest.raises(MalformedMessage, match=r"leases\[0\]"):
        cp.decode_leases({"leases": [[1]]})
    put = WatchEvent(WatchEventType.PUT, b"/k", b"v", None, 9, 0, 3, 2, 5)
    assert cp.decode_watch_item(cp.encode_watch_event(put)) == put
    delete = WatchEvent(WatchEventType.DELETE, b"/k", b"", b"v", 10)
    assert "version" not in cp.encode_watch_event(delete)
    assert cp.decode_watch_item(cp.encode_watch_event(delete)) == delete


def dengine_lease(lease_id: int, ttl: float) -> object:
    from dengine.api import Lease
    return Lease(lease_id, ttl)


# --- nested transactions on the wire -------------------------------------------------

from dengine.api import MAX_TXN_DEPTH  # noqa: E402


def _patroni_ops() -> tuple[list[Compare], list[Op], list[Op]]:
    inner = Op.txn([Compare.create_revision(b"/leader") == 0], [Op.put(b"/leader", b"me", lease=3)],
                   [Op.get(b"/leader"), Op.txn([], [Op.scan(b"/", limit=1)])])
    return [Compare.value(b"/leader") == b"me"], [Op.put(b"/leader", b"me", lease=3)], [Op.delete(b"/x"), inner]


def test_nested_txn_request_and_result_round_trip() -> None:
    compare, success, failure = _patroni_ops()
    wire = cp.encode_txn_request(compare, success, failure)
    assert wire["failure"][1] == {
        "op": "txn",
        "compare": [{"target": "create_revision", "key": b"/leader", "op": "==", "value": 0}],
        "success": [{"op": "put", "key": b"/leader", "value": b"me", "lease": 3}],
        "failure": [{"op": "get", "key": b"/leader"},
                    {"op": "txn", "compare": [], "success": [{"op": "scan", "key": b"/", "end": b"0", "limit": 1}],
                     "failure": []}],
    }
    request = cp.decode_request(cp.encode_request(1, "txn", wire))
    assert cp.decode_txn_request(request.args) == (compare, success, failure)
    # The nested answer is a txn answer of its own, read with the nested branches.
    held = KeyValue(b"/leader", b"you", 4, 2, 3, 0)
    scan = ScanResult([held], 9, more=True, count=2)
    result = TxnResult(False, 9, [0, TxnResult(False, 9, [held, TxnResult(True, 9, [scan])])])
    body = cp.decode_response(cp.encode_response(1, "ok", cp.encode_txn_result(result, failure))).body
    assert body["responses"][1] == {"succeeded": False, "revision": 9, "responses": [
        cp.encode_kv(held), {"succeeded": True, "revision": 9, "responses": [cp.encode_scan(scan)]}]}
    assert cp.decode_txn_result(body, success, failure) == result
    created = TxnResult(False, 10, [1, TxnResult(True, 10, [10])])
    assert cp.decode_txn_result(cp.encode_txn_result(created, failure), success, failure) == created


def _nest(levels: int) -> dict:  # type: ignore[type-arg]
    op: dict = {"op": "get", "key": b"k"}  # type: ignore[type-arg]
    for _ in range(levels):
        op = {"op": "txn", "success": [op]}
    return {"success": [op]}


@pytest.mark.parametrize(
    ("args", "error", "needle"),
    [
        ({"success": [{"op": "txn", "key": b"k"}]}, MalformedMessage, "success[0] has no field 'key'"),
        ({"success": [{"op": "txn", "success": b"x"}]}, MalformedMessage, "'success[0].success' must be an array"),
        ({"failure": [{"op": "txn", "compare": ["x"]}]}, MalformedMessage, "failure[0].compare[0] must be a map"),
        ({"failure": [{"op": "txn", "success": [{"op": "txn", "failure": [7]}]}]}, MalformedMessage,
         "failure[0].success[0].failure[0] must be a map"),
        ({"success": [{"op": "txn", "failure": [{"op": "rename", "key": b"k"}]}]}, _InvalidArgument,
         "success[0].failure[0]: unknown op 'rename'"),
        ({"success": [{"op": "txn", "compare": [{"target": "value", "key": b"k", "op": "==", "value": 1}]}]},
         _InvalidArgument, "needs bytes"),
        ({"success": [{"op": "txn", "success": [{"op": "get", "key": "k"}]}]}, MalformedMessage,
         "'key' must be bytes"),
        (_nest(MAX_TXN_DEPTH + 1), _InvalidArgument, "txn nesting is deeper than the limit of 8"),
    ],
)
def test_bad_nested_txn_requests_are_refused_by_name(args: dict, error: type, needle: str) -> None:
    with pytest.raises(error) as info:
        cp.decode_txn_request(args)
    assert needle in str(info.value)


def test_nesting_up_to_the_limit_decodes() -> None:
    _, success, _ = cp.decode_txn_request(_nest(MAX_TXN_DEPTH))
    op, depth = success[0], 0
    while op.kind == "txn":
        assert op.txn is not None
        op, depth = op.txn[1][0], depth + 1
    assert depth == MAX_TXN_DEPTH and op == Op.get(b"k")


def test_malformed_nested_txn_answers_are_refused() -> None:
    _, success, failure = _patroni_ops()
    good = cp.encode_txn_result(TxnResult(False, 10, [1, TxnResult(True, 10, [10])]), failure)
    for bad, needle in (
        ({**good, "responses": [{"deleted": 1}, 7]}, "responses[1] must be a map"),
        ({**good, "responses": [{"deleted": 1}, {"succeeded": True, "revision": 10, "responses": []}]},
         "'responses[1].responses' must be an array of 1 answers"),
        ({**good, "responses": [{"deleted": 1}, {"succeeded": "yes", "revision": 10, "responses": [{}]}]},
         "'succeeded' must be true or false"),
        ({**good, "responses": [{"deleted": 1}, {"succeeded": True, "revision": 10, "responses": [{"revision": -1}]}]},
         "'revision' must be a non-negative integer"),
    ):
        with pytest.raises(MalformedMessage) as info:
            cp.decode_txn_result(bad, success, failure)
        assert needle in str(info.value)
