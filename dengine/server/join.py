"""Joining a running cluster: ``dengine serve --join ENDPOINT[,ENDPOINT...]``.

Rules:

* :func:`prepare_join` runs before the node starts. It asks the cluster
  (through the client protocol, at the given client endpoints) to add this
  node as a learner with its peer and client address, and returns the
  configuration to start with: the id the cluster gave it (or ``--id``),
  the members to contact, ``cluster.join = true``. The id is written to
  ``join.json`` in the data directory, so a restart with the same flags
  comes back as the same member instead of asking again; a node whose peer
  address the cluster already lists (a first start that failed after the
  add) takes that member's id.
* :func:`auto_promote` runs beside the started node: it asks the leader to
  promote it, again and again while the leader refuses because it has not
  caught up (bounded: a few minutes), and stops once it is a voter.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import attrs
import trio

from dengine.api import Member
from dengine.client.client import Client, open_client
from dengine.config import Config
from dengine.errors import DengineError, MembershipChangeRefused, StorageError

__all__ = ["JOIN_FILE", "auto_promote", "prepare_join"]

log = logging.getLogger("dengine.server")

#: In the data directory: the id this node was given when it joined.
JOIN_FILE = "join.json"
# How long a joined learner keeps asking to be promoted before it gives up
# (and says to run `dengine member promote`).
_PROMOTE_FOR = 600.0


def _saved_id(data_dir: str) -> int | None:
    try:
        with open(os.path.join(data_dir, JOIN_FILE), encoding="utf-8") as f:
            saved = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot read {os.path.join(data_dir, JOIN_FILE)}: {exc}") from None
    node_id = saved.get("node_id") if isinstance(saved, dict) else None
    if isinstance(node_id, bool) or not isinstance(node_id, int) or node_id <= 0:
        raise StorageError(f"{os.path.join(data_dir, JOIN_FILE)} does not hold a node id")
    return node_id


def _save_id(data_dir: str, node_id: int, cluster_id: str) -> None:
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, JOIN_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"node_id": node_id, "cluster_id": cluster_id}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


async def prepare_join(
    config: Config,
    endpoints: Sequence[str],
    *,
    node_id: int | None = None,
    client_address: str | None = None,
    timeout: float = 10.0,
) -> Config:
    """Have the cluster at ``endpoints`` add this node (once), and return
    the configuration to start it with."""
    saved = await trio.to_thread.run_sync(_saved_id, config.data_dir)
    if saved is not None and node_id is not None and saved != node_id:
        raise DengineError(f"{config.data_dir} belongs to node {saved}, not node {node_id}")
    async with open_client(endpoints, cluster_id=config.cluster_id, timeout=timeout) as client:
        members = await client.members()
        advertised = config.advertised_peer_address  # what the others dial
        mine = next((m for m in members if m.peer_address == advertised), None)
        if saved is not None:
            given = saved
        elif mine is not None:
            given = mine.node_id
            log.info("the cluster already lists %s as node %d: starting as that member", advertised, given)
        else:
            member = await client.add_member(advertised, node_id=node_id, client_address=client_address)
            given = member.node_id
            log.info("the cluster added this node as node %d (a learner)", given)
            members = await client.members()
    await trio.to_thread.run_sync(_save_id, config.data_dir, given, config.cluster_id)
    initial = {m.node_id: m.peer_address for m in members if m.peer_address and m.node_id != given}
    initial[given] = advertised
    return attrs.evolve(
        config,
        node=attrs.evolve(config.node, id=given, peer_address=config.peer_address),
        cluster=attrs.evolve(config.cluster, initial=initial, join=True),
    )


async def auto_promote(node_id: int, endpoints: Sequence[str], cluster_id: str) -> None:
    """Ask the leader to promote learner ``node_id`` until it is a voter."""
    delay = 0.2
    deadline = trio.current_time() + _PROMOTE_FOR
    async with open_client(endpoints, cluster_id=cluster_id, timeout=10) as client:
        while True:
            members = await _members_or_none(client)
            me = next((m for m in members or () if m.node_id == node_id), None)
            if me is not None and not me.is_learner:
                log.info("node %d is a voter", node_id)
                return
            try:
                await client.promote_member(node_id)
                log.info("node %d was promoted to voter", node_id)
                return
            except MembershipChangeRefused as exc:
                log.debug("not promoted yet: %s", exc)
            except DengineError as exc:
                if "not a learner" in str(exc):
                    return  # a voter already (promoted by an operator)
                log.info("asking to be promoted failed, will retry: %s", exc)
            if trio.current_time() + delay > deadline:
                log.error("node %d was not promoted within %g s; promote it with `dengine member promote %d`",
                          node_id, _PROMOTE_FOR, node_id)
                return
            await trio.sleep(delay)
            delay = min(delay * 1.5, 2.0)


async def _members_or_none(client: Client) -> list[Member] | None:
    try:
        return await client.members()
    except DengineError:
        return None
