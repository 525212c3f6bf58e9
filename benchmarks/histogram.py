"""A small HDR-style latency histogram: log-bucketed, fixed relative error.

Values (seconds) are recorded as integer nanoseconds into buckets whose width
grows with the value: every power of two is split into ``2**precision_bits``
equal sub-buckets, so any recorded value is reported within a relative error
of ``2**-precision_bits`` (1/128 < 0.8 % by default), whatever its magnitude,
in O(1) time and a few kilobytes. Percentiles are read from the buckets (the
bucket's midpoint, clamped to the exact min/max); the mean, min and max are
exact. Histograms merge (add counts), so per-task or per-process histograms
can be combined, and round-trip through a plain dict for JSON.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Histogram"]


class Histogram:
    def __init__(self, precision_bits: int = 7) -> None:
        if not 1 <= precision_bits <= 16:
            raise ValueError("precision_bits must be between 1 and 16")
        self.precision_bits = precision_bits
        self._sub = 1 << precision_bits
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total_ns = 0
        self.min_ns: int | None = None
        self.max_ns: int | None = None

    # -- recording ------------------------------------------------------

    def _bucket(self, ns: int) -> int:
        """Bucket index: values below 2**p have their own bucket each; above,
        (exponent, top p bits) -- monotonic in ``ns``."""
        if ns < self._sub:
            return ns
        shift = ns.bit_length() - 1 - self.precision_bits
        return ((shift + 1) << self.precision_bits) + (ns >> shift) - self._sub

    def _bounds(self, bucket: int) -> tuple[int, int]:
        """[low, high) in ns of a bucket."""
        if bucket < self._sub:
            return bucket, bucket + 1
        shift = (bucket >> self.precision_bits) - 1
        top = (bucket & (self._sub - 1)) + self._sub
        return top << shift, (top + 1) << shift

    def record(self, seconds: float) -> None:
        self.record_ns(int(seconds * 1e9))

    def record_ns(self, ns: int) -> None:
        if ns < 0:
            ns = 0
        b = self._bucket(ns)
        counts = self.counts
        counts[b] = counts.get(b, 0) + 1
        self.count += 1
        self.total_ns += ns
        if self.min_ns is None or ns < self.min_ns:
            self.min_ns = ns
        if self.max_ns is None or ns > self.max_ns:
            self.max_ns = ns

    def merge(self, other: Histogram) -> None:
        if other.precision_bits != self.precision_bits:
            raise ValueError("cannot merge histograms of different precision")
        for b, c in other.counts.items():
            self.counts[b] = self.counts.get(b, 0) + c
        self.count += other.count
        self.total_ns += other.total_ns
        if other.min_ns is not None and (self.min_ns is None or other.min_ns < self.min_ns):
            self.min_ns = other.min_ns
        if other.max_ns is not None and (self.max_ns is None or other.max_ns > self.max_ns):
            self.max_ns = other.max_ns

    # -- reading --------------------------------------------------------

    def mean(self) -> float:
        """Mean in seconds (exact); 0 when empty."""
        return self.total_ns / self.count / 1e9 if self.count else 0.0

    def percentile(self, p: float) -> float:
        """The value (seconds) at or below which ``p`` percent of recordings lie."""
        if not 0 <= p <= 100:
            raise ValueError("p must be between 0 and 100")
        if not self.count:
            return 0.0
        assert self.min_ns is not None and self.max_ns is not None
        # Rank of the wanted recording, 1-based, as HdrHistogram does.
        rank = max(1, -(-self.count * p // 100))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                low, high = self._bounds(b)
                mid = (low + high - 1) / 2
                return min(max(mid, self.min_ns), self.max_ns) / 1e9
        return self.max_ns / 1e9  # pragma: no cover - rank <= count

    def summary(self) -> dict[str, float]:
        """avg, p50, p99, p99.9, max in milliseconds."""
        return {
            "avg_ms": self.mean() * 1e3,
            "p50_ms": self.percentile(50) * 1e3,
            "p99_ms": self.percentile(99) * 1e3,
            "p999_ms": self.percentile(99.9) * 1e3,
            "max_ms": (self.max_ns or 0) / 1e6,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision_bits": self.precision_bits,
            "count": self.count,
            "total_ns": self.total_ns,
            "min_ns": self.min_ns,
            "max_ns": self.max_ns,
            "counts": [[b, c] for b, c in sorted(self.counts.items())],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        h = cls(int(data["precision_bits"]))
        h.counts = {int(b): int(c) for b, c in data["counts"]}
        h.count = int(data["count"])
        h.total_ns = int(data["total_ns"])
        h.min_ns = data["min_ns"]
        h.max_ns = data["max_ns"]
        return h
