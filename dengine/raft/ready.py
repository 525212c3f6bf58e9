"""Ready: one numbered batch of work the core hands to its driver.

The driver's contract, in order, for each Ready:
1. send ``messages`` (they may leave at once, even before step 2: the leader's
   appends go out while its own fsync runs);
2. persist ``snapshot`` (if any), then ``entries`` (truncating any stored
   suffix from ``entries[0].index``) and ``hard_state`` as one durable batch;
3. call ``RawNode.on_persisted(number)`` and send the messages it returns
   (votes, vote requests, append acknowledgements: they promise durability);
4. apply ``snapshot`` then ``committed`` to the state machine (committed
   entries may be applied before step 2 finishes: a majority has them), and serve
   ``read_states`` once applied reaches their index; fail the reads whose ctx
   is in ``dropped_reads``.
Readies must be persisted in number order.
"""

from __future__ import annotations

import attrs

from dengine.raft.messages import Entry, HardState, Message, ReadState, Snapshot, SoftState


@attrs.frozen
class Ready:
    number: int
    soft_state: SoftState | None = None  # only when it changed
    hard_state: HardState | None = None  # only when it changed
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    messages: tuple[Message, ...] = ()
    # Shown for inspection; released by on_persisted(number), never sent before.
    after_persist: tuple[Message, ...] = ()
    committed: tuple[Entry, ...] = ()
    read_states: tuple[ReadState, ...] = ()
    dropped_reads: tuple[bytes, ...] = ()
    # Set when this node, as leader, committed the first entry of its term.
    first_commit_in_term: int | None = None

    def must_persist(self) -> bool:
        return bool(self.entries) or self.hard_state is not None or self.snapshot is not None
