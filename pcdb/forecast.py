"""Trend and forecast of a daily series, robust to one-off bulk loads, resets and gaps.

The capacity analysis forecasts levels that grow by a drift plus noise, with daily and weekly
seasonality and, now and then, a step: a bulk load, a partition dropped, a counter reset. The
model is a random walk with drift, the drift estimated from seven-day differences:

- a seven-day difference spans one whole week, so the weekly cycle cancels out;
- a step falls into at most seven of them, which a Hampel filter (median ± 4 robust standard
  deviations) removes before the mean is taken; a level fit (least squares, Huber, Theil-Sen)
  instead sees every point after the step lifted and bends its slope towards it;
- the noise is the robust spread (1.4826 × MAD) of the seven-day differences over sqrt(7) (of
  the daily differences while there are fewer than two weeks of them), and the prediction
  interval is the drift method's, sigma * sqrt(h * (1 + h / n)) (Hyndman & Athanasopoulos,
  Forecasting: Principles and Practice, §5.5).

``benchmarks/`` compares it with least squares, Theil-Sen and statsmodels' Huber fit on the
same synthetic histories (figures in benchmarks/results/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

DAY = 86400
HORIZON_DAYS = 3650      # a limit further away than ten years is "not within ten years"


@dataclass(frozen=True)
class Daily:
    """One value per UTC day (``day``: days since the epoch) of the days that have enough samples."""

    day: np.ndarray
    value: np.ndarray

    @property
    def span_days(self) -> int:
        return int(self.day[-1] - self.day[0]) + 1 if len(self.day) else 0


def daily(t: np.ndarray, v: np.ndarray, how: str = "median", min_points: int = 18) -> Daily:
    """Hourly points -> one value per day: the median, max or 95th percentile of the day's points.
    A day with fewer than ``min_points`` hours (a gap, or today so far) is left out, not guessed:
    a part of a day would carry only part of the daily cycle."""
    if len(t) == 0:
        return Daily(np.empty(0, dtype=np.int64), np.empty(0))
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    days = (t // DAY).astype(np.int64)
    edges = np.flatnonzero(np.diff(days)) + 1
    starts = np.concatenate(([0], edges))
    counts = np.diff(np.concatenate((starts, [len(days)])))
    # One row per day, its points left-aligned and the rest NaN: the day's statistic in one call
    # over all days (a loop over days was most of a capacity run's time).
    grid = np.full((len(starts), int(counts.max())), np.nan)
    grid[np.repeat(np.arange(len(starts)), counts), np.arange(len(v)) - np.repeat(starts, counts)] = v
    enough = counts >= min_points
    grid, n = np.sort(grid[enough], axis=1), counts[enough]          # NaN sorts last
    if not len(grid):
        return Daily(np.empty(0, dtype=np.int64), np.empty(0))
    rows = np.arange(len(grid))
    if how == "median":
        value = (grid[rows, (n - 1) // 2] + grid[rows, n // 2]) / 2
    elif how == "max":
        value = grid[rows, n - 1]
    else:                                                             # the 95th percentile, interpolated
        at = 0.95 * (n - 1)
        low = np.floor(at).astype(np.int64)
        high = np.minimum(low + 1, n - 1)
        value = grid[rows, low] + (grid[rows, high] - grid[rows, low]) * (at - low)
    return Daily(days[starts[enough]], value.astype(float))


@dataclass(frozen=True)
class Drift:
    """A level that grows by ``rate`` per day, with daily noise ``sigma``, known over ``n`` days."""

    level: float                 # the value on ``day`` (the last day with data)
    day: int
    rate: float                  # per day
    sigma: float
    n: int
    z: float
    steps: list[tuple[int, float]] = field(default_factory=list)   # (day, size) left out of the trend

    def at(self, h: float | np.ndarray) -> tuple:
        """(point, low, high) ``h`` days after the last day."""
        h = np.asarray(h, dtype=float)
        point = self.level + self.rate * h
        spread = self.z * self.sigma * np.sqrt(np.maximum(h, 0) * (1 + np.maximum(h, 0) / max(self.n, 1)))
        return point, point - spread, point + spread

    def days_to(self, limit: float) -> tuple[float | None, float | None, float | None]:
        """Days from the last day until the level reaches ``limit``: (point, low, high); 0 when it
        is already there; None where it is not reached within ten years (or does not grow)."""
        if self.level >= limit:
            return 0.0, 0.0, 0.0
        h = np.arange(1, HORIZON_DAYS + 1, dtype=float)
        _, lower, upper = self.at(h)
        point = (limit - self.level) / self.rate if self.rate > 0 else None
        if point is not None and point > HORIZON_DAYS:
            point = None
        return point, _crossing(h, upper, limit), _crossing(h, lower, limit)


def _crossing(h: np.ndarray, curve: np.ndarray, limit: float) -> float | None:
    """The first ``h`` where ``curve`` reaches ``limit``, interpolated between whole days (a bound
    rounded up to the next whole day once put true dates up to a day outside the interval)."""
    reached = np.flatnonzero(curve >= limit)
    if not len(reached):
        return None
    i = int(reached[0])
    if i == 0:
        before_h, before = 0.0, curve[0] - (curve[1] - curve[0]) if len(curve) > 1 else curve[0]
    else:
        before_h, before = float(h[i - 1]), float(curve[i - 1])
    if curve[i] == before:
        return float(h[i])
    return before_h + (float(h[i]) - before_h) * (limit - before) / (float(curve[i]) - before)


def z_of(interval_percent: float, df: int | None = None) -> float:
    """The two-sided quantile of the interval: normal, or Student's t with ``df`` degrees of
    freedom when the noise itself is estimated from few independent weeks (Abramowitz & Stegun
    26.7.5: good to 1e-3 from df = 3; below that the normal is widened the same way)."""
    z = NormalDist().inv_cdf(0.5 + interval_percent / 200)
    if not df:
        return z
    df = max(df, 3)
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def _mad(x: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(x - np.median(x)))) if len(x) else 0.0


def _residuals(day: np.ndarray, value: np.ndarray, rate: float, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Daily differences less the drift, each weekday's typical residual taken out (the weekly
    cycle is not noise) once there are two weeks of them; and the day gaps."""
    gaps = np.diff(day).astype(float)
    residual = np.diff(value) / gaps - rate
    if len(residual) >= 2 * lag:
        weekday = day[1:] % lag
        for w in np.unique(weekday):
            residual[weekday == w] -= np.median(residual[weekday == w])
    return residual, gaps


def _lag_pairs(day: np.ndarray, lag: int) -> list[tuple[int, int]]:
    position = {int(d): i for i, d in enumerate(day)}
    return [(position[int(d) - lag], i) for i, d in enumerate(day) if int(d) - lag in position]


def _long_run_sigma(day: np.ndarray, value: np.ndarray, rate: float, lag: int) -> float | None:
    """The per-day spread of the random walk, from the lag-day changes (robust spread / sqrt(lag)),
    or None with fewer than two lags' worth of them.

    Consecutive day medians share a day's growth (each spans noon to noon, half of one day and
    half of the next), so their differences are correlated and their spread understates the
    walk's by up to sqrt(2): the interval was too narrow (80 % of true dates inside a 90 %
    interval). A lag-day change sums lag days of growth, and the weekly cycle cancels in it."""
    pairs = _lag_pairs(day, lag)
    if len(pairs) < 2 * lag:
        return None
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    return _mad(value[b] - value[a] - rate * lag) / np.sqrt(lag)


def _weekly_rate(day: np.ndarray, value: np.ndarray, lag: int) -> float:
    """The mean of the lag-day slopes that a Hampel filter keeps."""
    pairs = _lag_pairs(day, lag)
    if len(pairs) < 2:   # gaps everywhere a week apart: fall back to neighbouring days
        pairs = [(i - 1, i) for i in range(1, len(day))]
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    slopes = (value[b] - value[a]) / (day[b] - day[a])
    centre, spread = float(np.median(slopes)), _mad(slopes)
    tolerance = 4 * spread if spread > 0 else 1e-9 * max(abs(centre), 1.0)
    kept = slopes[np.abs(slopes - centre) <= tolerance]
    return float(kept.mean()) if len(kept) else centre


def drift(series: Daily, interval_percent: float = 90, lag: int = 7) -> Drift | None:
    """The drift model of a daily series; None with fewer than three days.

    1. Steps first: a daily difference more than 5 robust standard deviations from the typical
       one (weekday by weekday) is a one-off change; it is taken out of every later value.
    2. The drift: the Hampel-filtered mean of the seven-day slopes of the corrected series.
    3. The noise: the robust spread of the corrected daily differences around the drift.
    """
    day, value = series.day, series.value
    if len(day) < 3:
        return None
    typical = float(np.median(np.diff(value) / np.diff(day)))
    residual, gaps = _residuals(day, value, typical, lag)
    floor = max(5 * _mad(residual), 1e-6 * max(abs(float(np.median(value))), 1.0))
    steps: list[tuple[int, float]] = []
    shift = np.zeros(len(day))
    for i in np.flatnonzero(np.abs(residual) > floor):
        size = float(residual[i] * gaps[i])
        shift[i + 1:] += size
        if steps and steps[-1][0] == int(day[i]) and (steps[-1][1] > 0) == (size > 0):
            steps[-1] = (steps[-1][0], steps[-1][1] + size)   # a step that straddles two days' medians
        else:
            steps.append((int(day[i + 1]), size))
    corrected = value - shift
    rate = _weekly_rate(day, corrected, lag)
    residual, _ = _residuals(day, corrected, rate, lag)
    long_run = _long_run_sigma(day, corrected, rate, lag)
    sigma = max(_mad(residual), long_run) if long_run is not None else _mad(residual)
    # The noise is estimated from this many independent weeks: the interval is Student's t on them.
    df = max(1, int((day[-1] - day[0]) // lag) - 1)
    # The level now: the mean of the last week's corrected days, each brought forward by the
    # drift, with the steps put back. A whole week, so that the weekly cycle (fast weekdays, slow
    # weekends) cancels: three days once put the level up to a day of growth above or below the
    # trend depending on the weekday the history ended on.
    tail = day >= day[-1] - (lag - 1) if len(day) >= lag else np.ones(len(day), dtype=bool)
    level = float(np.mean(corrected[tail] + rate * (day[-1] - day[tail]))) + float(shift[-1])
    return Drift(level=level, day=int(day[-1]), rate=rate, sigma=sigma, n=len(day) - 1,
                 z=z_of(interval_percent, df), steps=steps)


def theil_sen(x: np.ndarray, y: np.ndarray) -> float:
    """Theil-Sen slope (median of pairwise slopes); for the comparison in benchmarks/."""
    i, j = np.triu_indices(len(x), 1)
    dx = x[j] - x[i]
    ok = dx != 0
    return float(np.median((y[j] - y[i])[ok] / dx[ok]))


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values) -> str:
    """Text sparkline (notifications): one block per value, scaled between the min and the max."""
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    if hi - lo <= 0:
        return SPARK[3] * len(vals)
    return "".join(SPARK[min(7, int((v - lo) / (hi - lo) * 7.999))] for v in vals)
