"""Realistic metric history for tests and benchmarks, written into the health store as the health
runbook would have recorded it: 1-minute samples with daily and weekly seasonality, noise, a
one-off bulk load, optional gaps and a reset, and the hourly roll-ups the capacity analysis reads.

The truth is returned with it, so a test can check a forecast against a known answer.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

GiB = 2**30
MINUTE = 60
DAY = 86400


@dataclass(frozen=True)
class History:
    """What a generated history is made of."""

    end: datetime
    days: int = 93
    step_minutes: int = 1
    quota_bytes: int = 256 * GiB
    start_bytes: float = 60 * GiB
    growth_bytes_per_day: float = 0.5 * GiB
    bulk_load: tuple[float, float] | None = (40.0, 12 * GiB)      # (day, bytes) loaded at once
    reset: tuple[float, float] | None = None                      # (day, bytes) removed at once (a DROP)
    gaps: list[tuple[float, float]] = field(default_factory=list)  # (from day, to day) without samples
    noise_bytes: float = 0.05 * GiB                              # measurement noise of each sample
    growth_jitter: float = 0.3                                   # each day's growth varies by this share
    connections: tuple[float, float] = (40.0, 1.0)                # base, growth per week
    cpu: tuple[float, float] = (20.0, 0.5)                        # base %, growth in points per week
    cpu_swing: float = 25.0                                       # how much busier business hours are
    memory_percent: float = 55.0
    max_connections: int = 200
    xid_per_day: float = 2e6
    freeze_every_days: int = 20
    metrics: tuple[str, ...] = ("database_bytes", "storage_percent", "active_connections", "cpu_percent",
                                "memory_percent", "xid_age", "max_connections", "iops_percent")
    seed: int = 7
    future_days: int = 0      # the same process carried on past ``end`` (never written): the realised truth

    @property
    def start(self) -> datetime:
        return self.end - timedelta(days=self.days)

    def true_level_at_end(self) -> float:
        level = self.start_bytes + self.growth_bytes_per_day * self.days
        if self.bulk_load:
            level += self.bulk_load[1]
        if self.reset:
            level -= self.reset[1]
        return level

    def true_days_to(self, used_bytes: float) -> float:
        """When the mean growth from the mean level at ``end`` reaches ``used_bytes`` (days)."""
        return (used_bytes - self.true_level_at_end()) / self.growth_bytes_per_day

    def realised_days_to(self, used_bytes: float, after: datetime | None = None) -> float | None:
        """When this history's own storage (noise-free: the data, not the measurement), carried on
        past ``end`` by the same process (busy and quiet days, the weekly cycle), first reaches
        ``used_bytes``: days after ``after`` (default ``end``), or None beyond ``future_days``."""
        since = (after or self.end).timestamp()
        t, storage = _storage_path(self, np.random.default_rng(self.seed))[:2]
        reached = np.flatnonzero((t >= since) & (storage >= used_bytes))
        return float((t[reached[0]] - since) / DAY) if len(reached) else None


def _storage_path(h: History, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(epoch seconds, storage without measurement noise, day since start, business-hours weight)
    over the history and its ``future_days``. Draws the day-to-day jitter from ``rng`` first."""
    t0 = h.start.timestamp()
    t = t0 + np.arange(0, (h.days + h.future_days) * DAY, h.step_minutes * MINUTE, dtype=float)
    day = (t - t0) / DAY
    hour = (t % DAY) / 3600
    weekday = ((t // DAY).astype(np.int64) + 3) % 7          # 1970-01-01 was a Thursday: 0 = Monday
    weekend = weekday >= 5
    business = np.clip(np.sin((hour - 0) / 24 * 2 * np.pi - np.pi / 2) + 0.3, 0, None)   # day > night
    # Growth follows the traffic: faster by day and on weekdays; its mean over a week is the slope.
    weight = (1 + 0.8 * (business - business.mean())) * np.where(weekend, 0.4, 1.24)
    weight /= weight.mean()
    total_days = h.days + h.future_days
    jitter = rng.standard_normal(total_days + 1)    # busy days and quiet days, the slope kept as given
    daily_factor = 1 + h.growth_jitter * (jitter - jitter.mean())
    weight *= daily_factor[np.minimum(day.astype(np.int64), total_days)]
    increments = h.growth_bytes_per_day * h.step_minutes * MINUTE / DAY * weight
    storage = h.start_bytes + np.cumsum(increments) - increments[0]
    if h.bulk_load:
        storage += np.where(day >= h.bulk_load[0], h.bulk_load[1], 0.0)
    if h.reset:
        storage -= np.where(day >= h.reset[0], h.reset[1], 0.0)
    return t, storage, day, business


def series(h: History) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(epoch seconds, {metric: values}) of the whole history, gaps removed (never ``future_days``)."""
    rng = np.random.default_rng(h.seed)
    t, storage, day, business = _storage_path(h, rng)
    weekday = ((t // DAY).astype(np.int64) + 3) % 7
    weekend = weekday >= 5
    storage = storage + rng.normal(0, h.noise_bytes, len(t))
    connections = (h.connections[0] + h.connections[1] * day / 7 + 45 * business * np.where(weekend, 0.4, 1.0)
                   + rng.normal(0, 3, len(t)))
    cpu = h.cpu[0] + h.cpu[1] * day / 7 + h.cpu_swing * business * np.where(weekend, 0.5, 1.0) + rng.normal(0, 3, len(t))
    xid = 5e7 + h.xid_per_day * (day % h.freeze_every_days)
    values = {"database_bytes": storage, "storage_percent": 100 * storage / h.quota_bytes,
              "active_connections": np.maximum(np.round(connections), 0),
              "cpu_percent": np.clip(cpu, 0, 100),
              "memory_percent": np.clip(h.memory_percent + rng.normal(0, 2, len(t)), 0, 100),
              "xid_age": xid, "max_connections": np.full(len(t), float(h.max_connections)),
              "iops_percent": np.clip(15 + 10 * business + rng.normal(0, 2, len(t)), 0, 100)}
    keep = t < h.end.timestamp()
    for a, b in h.gaps:
        keep &= ~((day >= a) & (day < b))
    return t[keep], {m: values[m][keep] for m in h.metrics}


def write(db: sqlite3.Connection, h: History) -> int:
    """Write the history into a health store (samples and hourly roll-ups); returns the points written."""
    t, values = series(h)
    stamps = np.datetime_as_string(t.astype("datetime64[s]"), unit="s")
    ats = [f"{s}+00:00" for s in stamps]
    written = 0
    with db:
        db.execute("BEGIN")
        for metric, v in values.items():
            db.executemany("INSERT INTO samples VALUES (?, ?, ?)", zip(ats, [metric] * len(ats), v.tolist()))
            written += len(ats)
        db.execute("INSERT INTO hourly SELECT substr(at, 1, 13) || ':00:00+00:00', metric, count(*), sum(value), "
                   "max(value) FROM samples WHERE at >= ? AND at <= ? GROUP BY 1, 2 "
                   "ON CONFLICT (hour, metric) DO UPDATE SET n = n + excluded.n, total = total + excluded.total, "
                   "maximum = max(maximum, excluded.maximum)",
                   (ats[0], ats[-1]))
    return written


def hourly(h: History) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The hourly roll-ups :func:`write` leaves in a health store, computed here without one:
    {metric: (hour start in epoch seconds, average, maximum)}. For the calibration, which runs
    hundreds of histories; a test proves it equal to the store's."""
    t, values = series(h)
    hours = (t // 3600).astype(np.int64) * 3600
    starts = np.concatenate(([0], np.flatnonzero(np.diff(hours)) + 1))
    counts = np.diff(np.concatenate((starts, [len(hours)])))
    return {m: (hours[starts].astype(float), np.add.reduceat(v, starts) / counts, np.maximum.reduceat(v, starts))
            for m, v in values.items()}


def varied(seed: int, end: datetime, step_minutes: int = 60, future_days: int = 500) -> History:
    """One of a family of histories for calibrating the forecast: the growth, the starting level
    and the hour of the week the history ends at vary with ``seed``; 70 % have a bulk load, 40 % a
    DROP, half a gap of up to six days; all have the daily and weekly cycles."""
    rng = np.random.default_rng(1000 + seed)
    end = end + timedelta(hours=int(rng.integers(0, 24 * 7)))
    growth = float(rng.uniform(0.3, 0.8)) * GiB
    start = float(rng.uniform(40, 90)) * GiB
    bulk = (float(rng.uniform(10, 85)), float(rng.uniform(2, 15)) * GiB) if rng.random() < 0.7 else None
    reset = (float(rng.uniform(10, 85)), float(rng.uniform(1, 8)) * GiB) if rng.random() < 0.4 else None
    gaps = []
    if rng.random() < 0.5:
        a = float(rng.uniform(5, 80))
        gaps.append((a, a + float(rng.uniform(0.5, 6))))
    return History(end=end, step_minutes=step_minutes, seed=seed, future_days=future_days, growth_bytes_per_day=growth,
                   start_bytes=start, bulk_load=bulk, reset=reset, gaps=gaps)
