"""Malformed peer messages for the simulator: nonsense a correct peer never
sends (entries that are not contiguous or do not follow ``prev_index``,
terms above the message's own, negative indexes, a sender id of 0 ...).

Raft does not survive a *lying* peer (a well-formed message with a forged
term), so these are only messages that make no sense on their own: a node
must drop them, count them and keep serving.
"""

from __future__ import annotations

import random

from dengine.raft.messages import (
    AppendEntries,
    AppendResponse,
    Entry,
    Heartbeat,
    Message,
    ReadIndexResponse,
    RequestVote,
)


def hostile_message(rng: random.Random, to: int, ids: list[int]) -> Message:
    frm = rng.choice([i for i in ids if i != to] or ids)
    term = rng.randrange(1, 50)
    prev = rng.randrange(0, 100)
    kind = rng.randrange(8)
    if kind == 0:  # entries with a gap: (prev+1, prev+5)
        entries = (Entry(prev + 1, term), Entry(prev + 5, term))
        return AppendEntries(frm=frm, to=to, term=term, prev_index=prev, prev_term=term, entries=entries, commit=0)
    if kind == 1:  # the first entry does not follow prev_index
        entries = (Entry(prev + 3, term),)
        return AppendEntries(frm=frm, to=to, term=term, prev_index=prev, prev_term=term, entries=entries, commit=0)
    if kind == 2:  # an entry from a term later than the message's
        entries = (Entry(prev + 1, term + 1),)
        return AppendEntries(frm=frm, to=to, term=term, prev_index=prev, prev_term=term, entries=entries, commit=0)
    if kind == 3:  # entry terms going down
        entries = (Entry(prev + 1, term), Entry(prev + 2, term - 1 if term > 1 else 0))
        return AppendEntries(frm=frm, to=to, term=term + 1, prev_index=prev, prev_term=term, entries=entries, commit=0)
    if kind == 4:  # negative indexes
        return Heartbeat(frm=frm, to=to, term=term, commit=-rng.randrange(1, 10), round=1)
    if kind == 5:
        return AppendResponse(frm=frm, to=to, term=term, index=-rng.randrange(1, 10))
    if kind == 6:  # no such sender
        return RequestVote(frm=0, to=to, term=term, last_index=prev, last_term=term)
    return ReadIndexResponse(frm=frm, to=to, term=term, ctxs=(b"x",), index=-1)
