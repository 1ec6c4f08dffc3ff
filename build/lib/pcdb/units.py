"""Sizes and durations with units, converted exactly (no float rounding).

PostgreSQL's own rules: memory units B, kB, MB, GB, TB are powers of 1024; time units us, ms,
s, min, h, d. A value is converted to a parameter's unit (pg_settings.unit, e.g. ``8kB``) and
must come out a whole number, or it is rejected rather than silently rounded.
"""

from __future__ import annotations

import re
from datetime import timedelta
from fractions import Fraction

SIZE_UNITS = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
TIME_UNITS = {  # in microseconds
    "us": 1,
    "ms": 1000,
    "s": 1_000_000,
    "min": 60_000_000,
    "h": 3_600_000_000,
    "d": 86_400_000_000,
}
_VALUE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


class UnitError(ValueError):
    """A value whose unit is missing, unknown or of the wrong kind."""


def _split(text: str) -> tuple[Fraction, str]:
    match = _VALUE.match(str(text))
    if not match:
        raise UnitError(f"{text!r} is not a number with a unit (e.g. '4GB', '30min')")
    return Fraction(match.group(1)), match.group(2)


def _unit_error(text: str, unit: str, table: dict[str, int], kind: str) -> UnitError:
    near = [u for u in table if u.lower() == unit.lower()]
    hint = f" (units are case-sensitive: write {near[0]!r})" if near else ""
    return UnitError(
        f"{text!r}: {unit!r} is not a {kind} unit{hint}; use one of {', '.join(table)}"
    )


def parse_size(text: str | int) -> int:
    """Return the number of bytes in a size such as '4GB' or '512MB'.

    Raises:
        UnitError: no unit, an unknown unit, or not a whole number of bytes.
    """
    number, unit = _split(str(text))
    if not unit:
        raise UnitError(f"{text!r} has no unit; write it with one of {', '.join(SIZE_UNITS)}")
    if unit not in SIZE_UNITS:
        raise _unit_error(str(text), unit, SIZE_UNITS, "size")
    total = number * SIZE_UNITS[unit]
    if total.denominator != 1:
        raise UnitError(f"{text!r} is not a whole number of bytes")
    return int(total)


def parse_duration(text: str | int) -> timedelta:
    """Return the timedelta of a duration such as '30min', '1d' or '1000ms'.

    Raises:
        UnitError: no unit, an unknown unit, or finer than a microsecond.
    """
    return timedelta(microseconds=int(_duration_us(str(text))))


def _duration_us(text: str) -> Fraction:
    number, unit = _split(text)
    if not unit:
        raise UnitError(f"{text!r} has no unit; write it with one of {', '.join(TIME_UNITS)}")
    if unit not in TIME_UNITS:
        raise _unit_error(text, unit, TIME_UNITS, "time")
    total = number * TIME_UNITS[unit]
    if total.denominator != 1:
        raise UnitError(f"{text!r} is finer than a microsecond")
    return total


def unit_size(unit: str) -> tuple[str, Fraction]:
    """Return (kind, size of one unit) for a pg_settings unit: ('size', bytes) or ('time', us).

    pg_settings writes block-sized units with a multiplier, e.g. ``8kB`` (8 x 1024 bytes).
    """
    match = re.match(r"^(\d*)([A-Za-z]+)$", unit)
    if not match:
        raise UnitError(f"unknown parameter unit {unit!r}")
    factor = int(match.group(1) or 1)
    base = match.group(2)
    if base in SIZE_UNITS:
        return "size", Fraction(factor * SIZE_UNITS[base])
    if base in TIME_UNITS:
        return "time", Fraction(factor * TIME_UNITS[base])
    raise UnitError(f"unknown parameter unit {unit!r}")


def convert(text: str, unit: str) -> Fraction:
    """Convert '4GB' into a count of ``unit`` (e.g. '8kB' -> 524288); exact, not rounded.

    Raises:
        UnitError: the value's kind differs from the unit's, or it is not a whole count.
    """
    kind, one = unit_size(unit)
    number, given = _split(text)
    if kind == "size":
        if given not in SIZE_UNITS:
            raise (_unit_error(text, given, SIZE_UNITS, "size") if given else
                   UnitError(f"{text!r} has no unit; this parameter is measured in {unit}"))
        amount = number * SIZE_UNITS[given]
    else:
        if given not in TIME_UNITS:
            raise (_unit_error(text, given, TIME_UNITS, "time") if given else
                   UnitError(f"{text!r} has no unit; this parameter is measured in {unit}"))
        amount = number * TIME_UNITS[given]
    return amount / one


def format_duration(value: timedelta) -> str:
    """Render a timedelta in the largest unit that divides it exactly ('35d', '30min')."""
    us = value // timedelta(microseconds=1)
    if us == 0:
        return "0s"
    for unit in ("d", "h", "min", "s", "ms", "us"):
        if us % TIME_UNITS[unit] == 0:
            return f"{us // TIME_UNITS[unit]}{unit}"
    return f"{us}us"  # pragma: no cover - 'us' always divides


def format_size(nbytes: int) -> str:
    """Render bytes in the largest unit that divides them exactly ('4GB', '100MB')."""
    if nbytes == 0:
        return "0B"
    for unit in ("TB", "GB", "MB", "kB", "B"):
        if nbytes % SIZE_UNITS[unit] == 0:
            return f"{nbytes // SIZE_UNITS[unit]}{unit}"
    return f"{nbytes}B"  # pragma: no cover
