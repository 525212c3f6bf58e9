"""etcd's v3 messages (``etcdserverpb``, ``mvccpb``), built at import time.

Only the messages of the RPCs dengine serves are described here, field by
field, with the numbers of etcd's ``api/etcdserverpb/rpc.proto`` and
``api/mvccpb/kv.proto`` (the wire contract: a client encodes by number, so
the numbers and types must match etcd's; the names matter for the JSON
gateway, which uses etcd's original field names). The descriptors go into a
pool of dengine's own, so a process that also loads etcd's generated code
(aetcd, etcd3) sees no clash.

Needs the ``protobuf`` runtime (``pip install 'dengine[etcd]'``).
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["message", "MESSAGES"]

_F = descriptor_pb2.FieldDescriptorProto

# Field type names of the table below -> protobuf's types.
_SCALARS: Final = {
    "bytes": _F.TYPE_BYTES,
    "string": _F.TYPE_STRING,
    "bool": _F.TYPE_BOOL,
    "int64": _F.TYPE_INT64,
    "uint64": _F.TYPE_UINT64,
}

# package -> {enum name: [(value name, number), ...]}
_ENUMS: Final[dict[str, dict[str, list[tuple[str, int]]]]] = {
    "mvccpb": {
        "Event.EventType": [("PUT", 0), ("DELETE", 1)],
    },
    "etcdserverpb": {
        "RangeRequest.SortOrder": [("NONE", 0), ("ASCEND", 1), ("DESCEND", 2)],
        "RangeRequest.SortTarget": [("KEY", 0), ("VERSION", 1), ("CREATE", 2), ("MOD", 3), ("VALUE", 4)],
        "Compare.CompareResult": [("EQUAL", 0), ("GREATER", 1), ("LESS", 2), ("NOT_EQUAL", 3)],
        "Compare.CompareTarget": [("VERSION", 0), ("CREATE", 1), ("MOD", 2), ("VALUE", 3), ("LEASE", 4)],
        "WatchCreateRequest.FilterType": [("NOPUT", 0), ("NODELETE", 1)],
        "AlarmType": [("NONE", 0), ("NOSPACE", 1), ("CORRUPT", 2)],
        "AlarmRequest.AlarmAction": [("GET", 0), ("ACTIVATE", 1), ("DEACTIVATE", 2)],
    },
}

# package -> message name -> fields: (name, number, type, flags) where type is
# a scalar name, ".pkg.Message" or "enum:.pkg.Message.Enum"; flags: "repeated",
# or "oneof:NAME" (a member of that oneof).
_MESSAGES: Final[dict[str, dict[str, list[tuple[str, int, str, str]]]]] = {
    "mvccpb": {
        "KeyValue": [
            ("key", 1, "bytes", ""),
            ("create_revision", 2, "int64", ""),
            ("mod_revision", 3, "int64", ""),
            ("version", 4, "int64", ""),
            ("value", 5, "bytes", ""),
            ("lease", 6, "int64", ""),
        ],
        "Event": [
            ("type", 1, "enum:.mvccpb.Event.EventType", ""),
            ("kv", 2, ".mvccpb.KeyValue", ""),
            ("prev_kv", 3, ".mvccpb.KeyValue", ""),
        ],
    },
    "etcdserverpb": {
        "ResponseHeader": [
            ("cluster_id", 1, "uint64", ""),
            ("member_id", 2, "uint64", ""),
            ("revision", 3, "int64", ""),
            ("raft_term", 4, "uint64", ""),
        ],
        "RangeRequest": [
            ("key", 1, "bytes", ""),
            ("range_end", 2, "bytes", ""),
            ("limit", 3, "int64", ""),
            ("revision", 4, "int64", ""),
            ("sort_order", 5, "enum:.etcdserverpb.RangeRequest.SortOrder", ""),
            ("sort_target", 6, "enum:.etcdserverpb.RangeRequest.SortTarget", ""),
            ("serializable", 7, "bool", ""),
            ("keys_only", 8, "bool", ""),
            ("count_only", 9, "bool", ""),
            ("min_mod_revision", 10, "int64", ""),
            ("max_mod_revision", 11, "int64", ""),
            ("min_create_revision", 12, "int64", ""),
            ("max_create_revision", 13, "int64", ""),
        ],
        "RangeResponse": [
            ("header", 1, ".etcdserverpb.ResponseHeader", ""),
            ("kvs", 2, ".mvccpb.KeyValue", "repeated"),
            ("more", 3, "bool", ""),
            ("count", 4, "int64", ""),
        ],
        "PutRequest": [
            ("key", 1, "bytes", ""),
            ("value", 2, "bytes", ""),
            ("lease", 3, "int64", ""),
            ("prev_kv", 4, "bool", ""),
            ("ignore_value", 5, "bool", ""),
            ("ignore_lease", 6, "bool", ""),
        ],
        "PutResponse": [
            ("header", 1, ".etcdserverpb.ResponseHeader", ""),
            ("prev_kv", 2, ".mvccpb.KeyValue", ""),
        ],
        "DeleteRangeRequest": [
            ("key", 1, "bytes", ""),
            ("range_end", 2, "bytes", ""),
            ("prev_kv", 3, "bool", ""),
        ],
        "DeleteRangeResponse": [
            ("header", 1, ".etcdserverpb.ResponseHeader", ""),
            ("deleted", 2, "int64", ""),
            ("prev_kvs", 3, ".mvccpb.KeyValue", "repeated"),
        ],
        "RequestOp": [
            ("request_range", 1, ".etcdserverpb.RangeRequest", "oneof:request"),
            ("request_put", 2, ".etcdserverpb.PutRequest", "oneof:request"),
            ("request_delete_range", 3, ".etcdserverpb.DeleteRangeRequest", "oneof:request"),
            ("request_txn", 4, ".etcdserverpb.TxnRequest", "oneof:request"),
        ],
        "ResponseOp": [
            ("response_range", 1, ".etcdserverpb.RangeResponse", "oneof:response"),
            ("response_put", 2, ".etcdserverpb.PutResponse", "oneof:response"),
            ("response_delete_range", 3, ".etcdserverpb.DeleteRangeResponse", "oneof:response"),
            ("response_txn", 4, ".etcdserverpb.TxnResponse", "oneof:response"),
        ],
        "Compare": [
            ("result", 1, "enum:.etcdserverpb.Compare.CompareResult", ""),
            ("target", 2, "enum:.etcdserverpb.Compare.CompareTarget", ""),
            ("key", 3, "bytes", ""),
            ("version", 4, "int64", "oneof:target_union"),
            ("create_revision", 5, "int64", "oneof:target_union"),
            ("mod_revision", 6, "int64", "oneof:target_union"),
            ("value", 7, "bytes", "oneof:target_union"),
            ("lease", 8, "int64", "oneof:target_union"),
            ("range_end", 64, "bytes", ""),
        ],
        "TxnRequest": [
            ("compare", 1, ".etcdserverpb.Compare", "repeated"),
            ("success", 2, ".etcdserverpb.RequestOp", "repeated"),
            ("failure", 3, ".etcdserverpb.RequestOp", "repeated"),
        ],
        "TxnResponse": [
            ("header", 1, ".etcdserverpb.ResponseHeader", ""),
            ("succeeded", 2, "bool", ""),
            ("responses", 3, ".etcdserverpb.ResponseOp", "repeated"),
        ],
        "CompactionRequest": [
            ("revision", 1, "int64", ""),
            ("physical", 2, "bool", ""),
        ],
        "CompactionResponse": [
            ("header", 1, ".etcdserverpb.ResponseHeader", ""),
        ],
        "WatchRequest": [
            ("create_request", 1, ".etcdserverpb.WatchCreateRequest", "oneof:request_union"),
            ("cancel_request", 2, ".etcdserverpb.WatchCancelRequest", "oneof:request_union"),
            ("progress_request", 3, ".etcdserverpb.WatchProgressRequest", "oneof:request_union"),
        ],
        "WatchCreateRequest": [
            ("key", 1, "bytes", ""),
            ("range_end", 2, "bytes", ""),
            ("start_revision", 3, "int64", ""),
            ("progress_notify", 4, "bool", ""),
            ("filters", 5, "enum:.etcdserverpb.WatchCreateRequest.FilterType", "repeated"),
            ("prev_kv", 6, "bool", ""),
            ("watch_id", 7, "int64", ""),
            ("fragment", 8, "bool", ""),
        ],
        "WatchCancelRequest": [
            ("watch_id", 1, "int64", ""),
        ],
        "WatchProgressRequest": [],
        "WatchResponse": [
            ("header", 1, ".etcdserverpb.ResponseHeader", ""),
            ("watch_id", 2, "int64", ""),
            ("created", 3, "bool", ""),
            ("canceled", 4, "bool", ""),
            ("compact_revision", 5, "int64", ""),
            ("cancel_reason", 6, "string", ""),
            ("fragment", 7, "bool", ""),
            ("events", 11, ".mvccpb.Event", "repeated"),
        ],
        "LeaseGrantRequest": [
            ("TTL", 1, "int64", ""),
            ("ID", 2, "int64", ""),
        ],
        "LeaseGrantResponse": [
            ("header", 1, ".etcdserverpb.ResponseHeader", ""),
            ("ID", 2, "int64", ""),
            ("TTL", 3, "int64", ""),
            ("error", 4, "string", ""),
        ],
        "LeaseRevokeRequest": [
            ("ID", 1, "int64", ""),
        ],
        "LeaseRevokeResponse": [
            ("header", 1, ".etcdserverpb.ResponseHeader", ""),
        ],
        "LeaseKeepAliveRequest": [
            ("ID", 1, "int64", ""),
        ],
        "LeaseKeepAliveResponse": [
            ("header", 1, ".etcdserverpb.ResponseHeader", ""),
            ("ID", 2, "int64", ""),
            ("TTL", 3, "int64", ""),
        ],
        "LeaseTimeToLiveRequest": [
            ("ID", 1, "int64", ""),
            ("keys", 2, "bool", ""),
        ],
        "LeaseTimeToLiveResponse": [
            ("header", 1, ".etcdserverpb.ResponseHeader", ""),
            ("ID", 2, "int64", ""),
            ("TTL", 3, "int64", ""),
            ("grantedTTL", 4, "int64", ""),
            ("keys", 5, "bytes", "repeated"),
        ],
        "LeaseLeasesRequest": [],
        "LeaseStatus": [
            ("ID", 1, "int64", ""),
        ],
        "LeaseLeasesResponse": [
            ("header", 1, ".etcdserverpb.ResponseHeader", ""),
            ("leases", 2, ".etcdserverpb.LeaseStatus", "repeated"),
        ],
        "Member": [
            ("ID", 1, "uint64", ""),
            ("name", 2, "string", ""),
            ("peerURLs", 3, "string", "repeated"),
            ("clientURLs", 4, "string", "repeated"),
            ("isLearner", 5, "bool", ""),
        ],
        "MemberAddRequest": [
            ("peerURLs", 1, "string", "repeated"),
            ("isLearner", 2, "bool", ""),
        ],
        "MemberAddResponse": [
            ("header", 1, ".etcdserverpb.ResponseHeader", ""),
            ("member", 2, ".etcdserverpb.Member", ""),
            ("members", 3, ".etcdserverpb.Member", "repeated"),
        ],
        "MemberRemoveRequest": [
            ("ID", 1, "uint64", ""),
        ],
        "MemberRemoveResponse": [
            ("header", 1, ".etcdserverpb.ResponseHeader", ""),
            ("members", 2, ".etcdserverpb.Member", "repeated"),
        ],
        "MemberUpdateRequest": [
            ("ID", 1, "uint64", ""),
            ("peerURLs", 2, "string", "repeated"),
        ],
        "MemberUpdateResponse": [
            ("header", 1, ".etcdserverpb.ResponseHeader", ""),
            ("members", 2, ".etcdserverpb.Member", "repeated"),
        ],
        "MemberPromoteRequest": [
            ("ID", 1, "uint64", ""),
        ],
        "MemberPromoteResponse": [
            ("header", 1, ".etcdserverpb.ResponseHeader", ""),
            ("members", 2, ".etcdserverpb.Member", "repeated"),
        ],
        "AlarmRequest": [
            ("action", 1, "enum:.etcdserverpb.AlarmRequest.AlarmAction", ""),
            ("memberID", 2, "uint64", ""),
            ("alarm", 3, "enum:.etcdserverpb.AlarmType", ""),
        ],
        "AlarmMember": [
            ("memberID", 1, "uint64", ""),
            ("alarm", 2, "enum:.etcdserverpb.AlarmType", ""),
        ],
        "AlarmResponse": [
            ("header", 1, ".etcdserverpb.ResponseHeader", ""),
            ("alarms", 2, ".etcdserverpb.AlarmMember", "repeated"),
        ],
        "MoveLeaderRequest": [
            ("targetID", 1, "uint64", ""),
        ],
        "MoveLeaderResponse": [
            ("header", 1, ".etcdserverpb.ResponseHeader", ""),
        ],
        "MemberListRequest": [
            ("linearizable", 1, "bool", ""),
        ],
        "MemberListResponse": [
            ("header", 1, ".etcdserverpb.ResponseHeader", ""),
            ("members", 2, ".etcdserverpb.Member", "repeated"),
        ],
        "StatusRequest": [],
        "StatusResponse": [
            ("header", 1, ".etcdserverpb.ResponseHeader", ""),
            ("version", 2, "string", ""),
            ("dbSize", 3, "int64", ""),
            ("leader", 4, "uint64", ""),
            ("raftIndex", 5, "uint64", ""),
            ("raftTerm", 6, "uint64", ""),
            ("raftAppliedIndex", 7, "uint64", ""),
            ("errors", 8, "string", "repeated"),
            ("dbSizeInUse", 9, "int64", ""),
            ("isLearner", 10, "bool", ""),
        ],
    },
}


def _file(package: str, deps: list[str]) -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(name=f"dengine/etcd/{package}.proto", package=package, syntax="proto3")
    f.dependency.extend(deps)
    by_name: dict[str, descriptor_pb2.DescriptorProto] = {}
    for name, fields in _MESSAGES[package].items():
        msg = f.message_type.add(name=name)
        by_name[name] = msg
        oneofs: dict[str, int] = {}
        for fname, number, ftype, flags in fields:
            field = msg.field.add(name=fname, number=number)  # JSON name: protobuf's lowerCamel (grpc-gateway takes both)
            field.label = _F.LABEL_REPEATED if flags == "repeated" else _F.LABEL_OPTIONAL
            if ftype in _SCALARS:
                field.type = _SCALARS[ftype]
            elif ftype.startswith("enum:"):
                field.type = _F.TYPE_ENUM
                field.type_name = ftype[5:]
            else:
                field.type = _F.TYPE_MESSAGE
                field.type_name = ftype
            if flags == "repeated" and field.type not in (_F.TYPE_BYTES, _F.TYPE_STRING, _F.TYPE_MESSAGE):
                field.options.packed = True
            if flags.startswith("oneof:"):
                group = flags[6:]
                if group not in oneofs:
                    oneofs[group] = len(msg.oneof_decl)
                    msg.oneof_decl.add(name=group)
                field.oneof_index = oneofs[group]
    for qualified, values in _ENUMS[package].items():
        if "." in qualified:
            owner, enum_name = qualified.split(".")
            enum = by_name[owner].enum_type.add(name=enum_name)
        else:  # a top-level enum
            enum = f.enum_type.add(name=qualified)
        for vname, number in values:
            enum.value.add(name=vname, number=number)
    return f


_POOL: Final = descriptor_pool.DescriptorPool()
_POOL.Add(_file("mvccpb", []))
_POOL.Add(_file("etcdserverpb", ["dengine/etcd/mvccpb.proto"]))

#: Message classes by short name ("RangeRequest", "KeyValue", ...).
MESSAGES: Final[dict[str, Any]] = {
    name: message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{package}.{name}"))
    for package, messages in _MESSAGES.items()
    for name in messages
}


def message(name: str) -> Any:
    """The class of etcd message ``name`` (e.g. ``message("PutRequest")``)."""
    return MESSAGES[name]
