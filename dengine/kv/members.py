"""The member table: what the replicated state records of each member.

Rules of this module:

* Roles (voter, learner) are Raft's (``ConfState``); this table holds what
  Raft does not know: each member's peer address and client address, and
  the highest node id ever given out, so an id is never reused.
* It changes only by applying committed membership entries, on every
  replica the same way, and travels in KV snapshots: a node that joined
  later, or restarted from a snapshot, knows every member's addresses
  without any configuration file.
* A membership entry's context (``ConfChange.context``) is a msgpack map
  ``{"peer": "host:port" | nil, "client": "host:port" | nil}``; a field that
  is absent or nil leaves what the table holds. A context that cannot be
  read applies as nothing (the entry is committed everywhere already).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import msgpack

__all__ = ["MemberAddresses", "MemberTable", "decode_member_context", "encode_member_context"]

_MAX_ADDRESS = 300


@attrs.frozen(slots=True)
class MemberAddresses:
    peer_address: str | None = None
    client_address: str | None = None


def encode_member_context(peer_address: str | None = None, client_address: str | None = None) -> bytes:
    body: dict[str, str] = {}
    if peer_address is not None:
        body["peer"] = peer_address
    if client_address is not None:
        body["client"] = client_address
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def _address(value: Any) -> str | None:
    if type(value) is str and 0 < len(value) <= _MAX_ADDRESS:
        return value
    return None


def decode_member_context(data: bytes) -> MemberAddresses:
    """The addresses a context names; empty for an empty or unreadable one."""
    if not data:
        return MemberAddresses()
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception:  # msgpack raises a zoo of errors; all mean "unreadable"
        return MemberAddresses()
    if type(body) is not dict:
        return MemberAddresses()
    return MemberAddresses(_address(body.get("peer")), _address(body.get("client")))


class MemberTable:
    """Node id -> addresses, and the highest id ever seen."""

    __slots__ = ("_members", "max_id", "removed")

    def __init__(self, members: Mapping[int, MemberAddresses] | None = None, max_id: int = 0,
                 removed: Iterable[int] = ()) -> None:
        self._members: dict[int, MemberAddresses] = dict(members or {})
        #: Ids of members removed (a removed node is told so when it calls).
        self.removed: set[int] = set(removed)
        self.max_id = max(max_id, max(self._members, default=0), max(self.removed, default=0))

    def get(self, node_id: int) -> MemberAddresses | None:
        return self._members.get(node_id)

    def items(self) -> Iterable[tuple[int, MemberAddresses]]:
        return sorted(self._members.items())

    def __len__(self) -> int:
        return len(self._members)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MemberTable) and (self._members, self.max_id, self.removed) == (
            other._members, other.max_id, other.removed)

    def __repr__(self) -> str:
        return f"MemberTable({self._members!r}, max_id={self.max_id})"

    def record(self, node_id: int, context: bytes) -> None:
        """A member added, or its addresses updated: merge what the context
        says into what the table holds."""
        said = decode_member_context(context)
        held = self._members.get(node_id, MemberAddresses())
        self._members[node_id] = MemberAddresses(
            said.peer_address if said.peer_address is not None else held.peer_address,
            said.client_address if said.client_address is not None else held.client_address,
        )
        self.max_id = max(self.max_id, node_id)

    def remove(self, node_id: int) -> None:
        self._members.pop(node_id, None)
        self.removed.add(node_id)
        self.max_id = max(self.max_id, node_id)

    def copy(self) -> MemberTable:
        return MemberTable(self._members, self.max_id, self.removed)

    # -- snapshots: [max_id, [[id, peer | nil, client | nil], ...], [removed id, ...]] --

    def to_wire(self) -> list[Any]:
        return [self.max_id, [[n, a.peer_address, a.client_address] for n, a in self.items()], sorted(self.removed)]

    @classmethod
    def from_wire(cls, raw: Any) -> MemberTable:
        """Raise ValueError if ``raw`` is not a table."""
        if (type(raw) is not list or len(raw) not in (2, 3) or type(raw[0]) is not int or raw[0] < 0
                or type(raw[1]) is not list):
            raise ValueError("the member table must be [max_id, [[id, peer, client], ...], [removed id, ...]]")
        removed = raw[2] if len(raw) == 3 else []
        if type(removed) is not list or not all(type(n) is int and n > 0 for n in removed):
            raise ValueError("the removed member ids must be positive integers")
        members: dict[int, MemberAddresses] = {}
        for row in raw[1]:
            if type(row) is not list or len(row) != 3 or type(row[0]) is not int or row[0] <= 0:
                raise ValueError(f"a member row must be [id, peer, client], got {row!r:.80}")
            node_id, peer, client = row
            if (peer is not None and _address(peer) is None) or (client is not None and _address(client) is None):
                raise ValueError(f"member {node_id}: addresses must be short strings or nil")
            members[node_id] = MemberAddresses(peer, client)
        return cls(members, raw[0], removed)
