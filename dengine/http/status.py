"""What the HTTP face reports about one node: ``/status.json``, ``/health``, ``/readyz``.

Rules of this module:

* Everything about this node is read from its engine on the event loop at
  request time: :class:`~dengine.api.Status`, :class:`~dengine.api.Health`
  and, on the leader, :class:`~dengine.api.FollowerProgress`. Nothing here
  changes the engine.
* Rates and latencies come from one sampler task (:meth:`StatusView.run`)
  that takes a :class:`Sample` every ``interval`` seconds into a bounded
  ring of ``HISTORY`` samples: a rate is the difference of two samples over
  their time (keys written -- the watch events this node applied --, Raft
  entries committed, client requests answered); the fsync p99 is read from the difference of two snapshots of
  the WAL fsync histogram, so it describes the last seconds, never all time.
* The ``cluster`` list holds this node's own view (read locally) and every
  other member's status asked through the client protocol
  (``Client.status(endpoint=...)``), all members at once, each bounded by
  ``peer_timeout``; requests that come within ``refresh`` seconds of the
  last round share its answers. A member that does not answer is listed
  with ``reachable: false`` and the error, so the page works when served by
  any member, including one cut off from the others.
* Figures that are not measured (the fsync histogram with ``[metrics]
  enabled = false``; client requests of an engine without a client
  endpoint) are reported as ``null``, never as 0.
"""

from __future__ import annotations

import math
import ssl
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Final

import attrs
import trio

from dengine.api import Health, Member, Status
from dengine.client.client import Client, open_client
from dengine.embedded import Engine
from dengine.errors import DengineError
from dengine.server import Server
from dengine.stats import HistogramData
from dengine.transport.client_protocol import encode_member

__all__ = ["HISTORY", "Sample", "StatusView", "quantile"]

#: Samples kept (one per ``interval``): two minutes at the default second.
HISTORY: Final = 120
_FSYNC_WINDOW: Final = 10.0  # seconds the "last fsync p99" looks back
_STARTING: Final = "the node is starting (its storage is being opened)"
_UNUSED_ENDPOINT: Final = "127.0.0.1:9081"
_RECENT: Final = ("writes_per_second", "entries_per_second", "requests_per_second", "fsync_p99_ms")


@attrs.frozen(slots=True)
class Sample:
    """What the sampler read at ``time`` (trio's clock)."""

    time: float
    commit_index: int
    writes: int
    requests: int | None
    fsync: HistogramData | None


def quantile(q: float, before: HistogramData | None, after: HistogramData) -> float | None:
    """The ``q`` quantile (0..1) of the values observed between two snapshots
    of one histogram, interpolated inside its bucket as Prometheus'
    ``histogram_quantile`` does; None when nothing was observed. A value in
    the ``+Inf`` bucket reports the largest finite bound."""
    counts = list(after.counts)
    if before is not None and before.bounds == after.bounds:
        counts = [a - b for a, b in zip(after.counts, before.counts)]
    total = sum(counts)
    if total <= 0 or not after.bounds:
        return None
    rank = q * total
    running = 0
    for k, n in enumerate(counts):
        if n > 0 and running + n >= rank:
            if k >= len(after.bounds):
                return after.bounds[-1]
            lower = after.bounds[k - 1] if k > 0 else 0.0
            upper = after.bounds[k]
            return lower + (upper - lower) * (rank - running) / n
        running += n
    return after.bounds[-1]


def _client_ssl_context(engine: Engine) -> ssl.SSLContext | None:
    """TLS towards the other members' client endpoints: on when this node's
    own endpoint uses TLS, presenting this node's certificate."""
    s = engine.config.server
    if s.tls_cert is None or s.tls_key is None:
        return None
    ctx = ssl.create_default_context(cafile=s.tls_ca) if s.tls_ca else ssl.create_default_context()
    ctx.load_cert_chain(s.tls_cert, s.tls_key)
    return ctx


def _rate(a: Sample, b: Sample, field: str) -> float | None:
    x: int | None = getattr(a, field)
    y: int | None = getattr(b, field)
    if x is None or y is None or b.time <= a.time:
        return None
    return round(max(0, y - x) / (b.time - a.time), 3)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _status_fields(st: Status) -> dict[str, Any]:
    return {
        "role": st.role,
        "term": st.term,
        "leader_id": st.leader_id,
        "commit_index": st.commit_index,
        "applied_index": st.applied_index,
    }


class StatusView:
    """One node's reports for the HTTP face. ``source`` may be attached
    later (:meth:`attach`): until then every report says the node is starting."""

    def __init__(
        self,
        source: Engine | Server | None = None,
        *,
        interval: float = 1.0,
        peer_timeout: float = 1.0,
        refresh: float = 0.5,
    ) -> None:
        self.interval = interval
        self.peer_timeout = peer_timeout
        self.refresh = refresh
        self.source: Engine | Server | None = None
        self.engine: Engine | None = None
        self._samples: deque[Sample] = deque(maxlen=HISTORY + 1)
        self._client: Client | None = None
        self._attached = trio.Event()
        self._answers: dict[int, Status | str] = {}
        self._asked_at = -math.inf
        self._cluster_lock = trio.Lock()
        if source is not None:
            self.attach(source)

    def attach(self, source: Engine | Server) -> None:
        """Report on ``source`` (an Engine or a Server) from now on."""
        if not isinstance(source, (Engine, Server)):
            raise TypeError(f"source must be a dengine Engine or Server, got {type(source).__name__}")
        self.source = source
        self.engine = source.engine if isinstance(source, Server) else source
        self._attached.set()

    # -- the sampler -------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Own the client used to ask the other members, and take a sample
        every ``interval`` seconds, until cancelled."""
        task_status.started()
        await self._attached.wait()
        engine = self.engine
        assert engine is not None
        # Connections open lazily and status(endpoint=...) names each member:
        # the endpoint given here is never dialled.
        async with open_client(
            [_UNUSED_ENDPOINT],
            timeout=self.peer_timeout,
            cluster_id=engine.config.cluster_id,
            ssl_context=_client_ssl_context(engine),
        ) as client:
            self._client = client
            try:
                # A stopping engine is not sampled any more (dengine serve
                # stops the engine before its HTTP face).
                while not engine.stop_notify().is_set():
                    self._samples.append(self._sample(engine))
                    await trio.sleep(self.interval)
                await trio.sleep_forever()
            finally:
                self._client = None

    def _sample(self, engine: Engine) -> Sample:
        requests: int | None = None
        if isinstance(self.source, Server):
            requests = self.source.statistics().requests
        return Sample(
            time=trio.current_time(),
            commit_index=engine.status().commit_index,
            writes=engine.watch_statistics().events_published,
            requests=requests,
            # None when [metrics] enabled is off: the chart then says "no data".
            fsync=engine.statistics().wal_fsync_seconds,
        )

    def history(self) -> dict[str, Any]:
        """Per-interval series, oldest first: keys written per second, Raft
        entries committed per second, client requests per second, fsync p99
        in milliseconds (null where unknown)."""
        samples = list(self._samples)
        pairs = list(zip(samples, samples[1:]))
        fsync: list[float | None] = []
        for a, b in pairs:
            fsync.append(_ms(quantile(0.99, a.fsync, b.fsync)) if b.fsync is not None else None)
        return {
            "interval": self.interval,
            "writes_per_second": [_rate(a, b, "writes") for a, b in pairs],
            "entries_per_second": [_rate(a, b, "commit_index") for a, b in pairs],
            "requests_per_second": [_rate(a, b, "requests") for a, b in pairs],
            "fsync_p99_ms": fsync,
        }

    def _recent(self) -> dict[str, float | None]:
        """The rates over the last interval and the fsync p99 (ms) over the
        last ``_FSYNC_WINDOW`` seconds."""
        samples = list(self._samples)
        if len(samples) < 2:
            return dict.fromkeys(_RECENT)
        a, b = samples[-2], samples[-1]
        old = next((s for s in samples if b.time - s.time <= _FSYNC_WINDOW), samples[0])
        return {
            "writes_per_second": _rate(a, b, "writes"),
            "entries_per_second": _rate(a, b, "commit_index"),
            "requests_per_second": _rate(a, b, "requests"),
            "fsync_p99_ms": _ms(quantile(0.99, old.fsync, b.fsync)) if b.fsync is not None else None,
        }

    # -- reports -------------------------------------------------------------------

    def health(self) -> Health:
        if self.engine is None:
            return Health(False, _STARTING)
        return self.engine.health()

    def readiness(self) -> Health:
        """Ready = the engine can serve linearizable requests and is healthy."""
        engine = self.engine
        if engine is None:
            return Health(False, _STARTING)
        if not engine.ready_notify().is_set():
            return Health(False, "the node has not caught up with the cluster yet (no leader, or its first "
                                 "commit in this term is not applied)")
        return engine.health()

    def liveness(self) -> Health:
        engine = self.engine
        if engine is not None and engine.stopped_notify().is_set():
            return Health(False, "the engine has stopped")
        return Health(True)

    async def document(self) -> dict[str, Any]:
        """The ``/status.json`` document (docs/http.md)."""
        engine = self.engine
        if engine is None:
            return {"starting": True, "health": {"health": "false", "reason": _STARTING}, "cluster": []}
        st = engine.status()
        health = engine.health()
        followers = engine.follower_progress()
        return {
            "starting": False,
            "node_id": st.node_id,
            "cluster_id": engine.config.cluster_id,
            **_status_fields(st),
            "last_snapshot_index": st.last_snapshot_index,
            "ready": engine.ready_notify().is_set(),
            "health": {"health": "true" if health.healthy else "false", "reason": health.reason},
            "client_address": engine.client_address,
            "members": [encode_member(m) for m in st.members],
            "followers": [attrs.asdict(f) for f in followers],
            **self._recent(),
            "history": self.history(),
            "cluster": await self.cluster(engine, st, health),
            "time": round(time.time(), 3),
        }

    async def cluster(self, engine: Engine, st: Status, health: Health) -> list[dict[str, Any]]:
        """Every member as this node sees it, the others asked over the
        client protocol (their answers shared for ``refresh`` seconds; this
        node's own row is always read now)."""
        async with self._cluster_lock:
            if trio.current_time() - self._asked_at >= self.refresh:
                self._answers = await self._ask_others(st.members, st.node_id)
                self._asked_at = trio.current_time()
            return self._merge(engine, st, health, self._answers)

    async def _ask_others(self, members: Sequence[Member], own_id: int) -> dict[int, Status | str]:
        answers: dict[int, Status | str] = {}
        client = self._client

        async def ask(m: Member) -> None:
            if m.client_address is None:
                answers[m.node_id] = "it serves no client endpoint (embedded), so it cannot be asked"
                return
            if client is None:
                answers[m.node_id] = "not asked yet"
                return
            try:
                with trio.fail_after(self.peer_timeout):
                    answers[m.node_id] = await client.status(endpoint=m.client_address, timeout=self.peer_timeout)
            except trio.TooSlowError:
                answers[m.node_id] = f"no answer within {self.peer_timeout:g} s"
            except DengineError as exc:
                answers[m.node_id] = str(exc)
            except Exception as exc:  # one member's odd answer must not take the page down: it is shown
                answers[m.node_id] = f"{type(exc).__name__}: {exc}"

        async with trio.open_nursery() as nursery:
            for m in members:
                if m.node_id != own_id:
                    nursery.start_soon(ask, m)
        return answers

    def _merge(
        self, engine: Engine, st: Status, health: Health, others: dict[int, Status | str]
    ) -> list[dict[str, Any]]:
        progress = {f.node_id: f for f in engine.follower_progress()}
        rows: list[dict[str, Any]] = []
        for m in sorted(st.members, key=lambda m: m.node_id):
            row: dict[str, Any] = {**encode_member(m), "self": m.node_id == st.node_id}
            if m.node_id == st.node_id:
                row.update(_status_fields(st), reachable=True, error=None,
                           healthy=health.healthy, health=health.reason or "healthy")
            else:
                answer = others.get(m.node_id, "not asked yet (a new member)")
                if isinstance(answer, Status):
                    healthy = answer.leader_id is not None
                    reason = "healthy" if healthy else "no leader"
                    pr = progress.get(m.node_id)
                    if pr is not None and not pr.recently_active:
                        healthy, reason = False, "the leader has not heard from it within an election timeout"
                    row.update(_status_fields(answer), reachable=True, error=None, healthy=healthy, health=reason)
                else:
                    row.update(role=None, term=None, leader_id=None, commit_index=None, applied_index=None,
                               reachable=False, error=answer, healthy=False, health="unreachable")
            rows.append(row)
        _fill_lag(rows, progress)
        return rows


def _fill_lag(rows: list[dict[str, Any]], progress: dict[int, Any]) -> None:
    """``lag``: entries a member is behind the leader. Exact on the leader
    (its last index minus the member's match index); elsewhere the leader's
    commit index minus the member's, as both reported them."""
    leader = next((r for r in rows if r.get("role") == "leader" and r.get("reachable")), None)
    for row in rows:
        pr = progress.get(row["node_id"])
        if pr is not None:
            row["lag"] = pr.lag
        elif row.get("role") == "leader":
            row["lag"] = 0
        elif leader is not None and row.get("commit_index") is not None:
            row["lag"] = max(0, leader["commit_index"] - row["commit_index"])
        else:
            row["lag"] = None
