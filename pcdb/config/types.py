"""The spec's value types: durations, sizes, CIDRs, time zones, clock times, cron expressions,
Azure names; and the strict base model every section derives from.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
)

from pcdb.units import UnitError, format_duration, format_size, parse_duration, parse_size


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
        return timedelta(0)
    try:
        return parse_duration(str(value))
    except UnitError as exc:
        raise ValueError(str(exc)) from None


def _size(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f"{value!r} has no unit; write a size such as '256GB'")
    try:
        return parse_size(str(value))
    except UnitError as exc:
        raise ValueError(str(exc)) from None


def _cidr(value: Any) -> str:
    try:
        return str(ipaddress.ip_network(str(value), strict=True))
    except ValueError as exc:
        try:
            near = ipaddress.ip_network(str(value), strict=False)
            raise ValueError(f"{value!r} has host bits set; did you mean {near}?") from None
        except ValueError as inner:
            if "host bits" in str(inner):
                raise
        raise ValueError(f"{value!r} is not a CIDR block such as 10.0.2.0/24 ({exc})") from None


def _timezone(value: Any) -> str:
    text = str(value)
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{text!r} is not an IANA time zone such as Asia/Seoul or UTC") from None
    return text


def _clock(value: Any) -> str:
    text = str(value)
    if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", text):
        raise ValueError(f"{text!r} is not a time of day as HH:MM, 00:00 to 23:59")
    return text


Duration = Annotated[timedelta, BeforeValidator(_duration), PlainSerializer(format_duration)]


TimeZone = Annotated[str, BeforeValidator(_timezone)]


Clock = Annotated[str, BeforeValidator(_clock)]


Size = Annotated[int, BeforeValidator(_size), PlainSerializer(format_size)]


Cidr = Annotated[str, BeforeValidator(_cidr)]


def _named(pattern: str, rule: str) -> Any:
    """A string field that must match ``pattern``, refused with ``rule`` in words (not a regex)."""
    compiled = re.compile(pattern)

    def check(value: Any) -> str:
        if not isinstance(value, str) or not compiled.fullmatch(value):
            raise ValueError(rule)
        return value
    return Annotated[str, BeforeValidator(check)]


# Azure's naming rules (Microsoft.DBforPostgreSQL, Microsoft.Network, Microsoft.Resources): a name
# outside them is refused by ARM, and a quote or a semicolon must never reach a plan.
ServerName = _named(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", "an Azure server name is 3-63 lower-case letters, digits "
                    "and hyphens, not starting or ending with a hyphen")


NetworkName = _named(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,78}[A-Za-z0-9_]", "an Azure network name is 2-80 letters, "
                     "digits, underscores, periods and hyphens, starting with a letter or digit")


ResourceName = _named(r"[A-Za-z0-9_.()-]{0,89}[A-Za-z0-9_()-]", "an Azure resource name is 1-90 letters, digits, "
                      "underscores, periods, hyphens and parentheses, not ending with a period")


Region = _named(r"[a-z][a-z0-9]{2,30}", "an Azure region is a lower-case word such as koreacentral")


Location = _named(r"loopback|[a-z][a-z0-9]{2,30}", "an Azure region such as koreacentral (loopback on the sandbox)")


class Model(BaseModel):
    """Base of every spec model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_CRON_FIELDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))   # minute hour day-of-month month day-of-week


_CRON_ITEM = re.compile(r"^(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?$")


def cron_is_valid(value: str) -> bool:
    """Five numeric cron fields (``*``, ``a``, ``a-b``, lists, ``/step``) within their ranges: the
    schedules pcdb writes; Prefect parses the same text when the deployment is registered."""
    fields = value.split()
    if len(fields) != 5:
        return False
    for text, (low, high) in zip(fields, _CRON_FIELDS):
        for item in text.split(","):
            match = _CRON_ITEM.match(item)
            if not match or (match.group(4) is not None and int(match.group(4)) == 0):
                return False
            first, last = match.group(2), match.group(3)
            if first is not None and not (low <= int(first) <= high and (last is None or int(first) <= int(last) <= high)):
                return False
    return True


def _cron(value: str) -> str:
    if not cron_is_valid(value):
        raise ValueError(f"{value!r} is not a cron expression (minute hour day-of-month month day-of-week, "
                         "e.g. '0 5 1-7 * 0' for the first Sunday at 05:00, '0 8 * * 1' for Mondays at 08:00)")
    return value


Cron = Annotated[str, AfterValidator(_cron)]
