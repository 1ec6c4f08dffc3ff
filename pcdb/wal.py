"""WAL file names as PostgreSQL defines them, for archive checks.

A segment file is named TTTTTTTT XXXXXXXX YYYYYYYY (hex): timeline, log id, and segment within
that log id. A log id spans 2^32 bytes of WAL, so it holds 2^32 / wal_segment_size segments (256
of the default 16 MB): after ...000000FF comes ...0000000100000000, not ...00000100. Reading the
last 16 digits as one number (as wave 1 did) turns that step into 4.29 billion "missing"
segments. The absolute segment number is log id x segments per log id + segment, the way
Patroni's parse_lsn computes an LSN as hi x 2^32 + lo.
"""

from __future__ import annotations

import re

_NAME = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024


def segments_per_log(segment_size: int) -> int:
    if segment_size <= 0 or segment_size & (segment_size - 1):
        raise ValueError(f"wal_segment_size {segment_size} is not a power of two")
    return 0x1_0000_0000 // segment_size


def parse_name(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[int, int] | None:
    """(timeline, absolute segment number) of a segment file name, or None for other files
    (history files, .backup labels, .partial suffixes are stripped by the caller)."""
    match = _NAME.match(name)
    if not match:
        return None
    timeline, log, seg = (int(part, 16) for part in match.groups())
    per_log = segments_per_log(segment_size)
    if seg >= per_log:
        return None  # not a name PostgreSQL writes with this segment size
    return timeline, log * per_log + seg


def segment_name(number: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    """The log-id and segment part (16 hex digits) of an absolute segment number."""
    log, seg = divmod(number, segments_per_log(segment_size))
    return f"{log:08X}{seg:08X}"


def missing_segments(archived: list[str], first: str, segment_size: int = DEFAULT_SEGMENT_SIZE,
                     limit: int = 1000) -> list[str]:
    """Segments (16-hex-digit names) missing between ``first`` (a segment file name) and the last
    archived one, on any timeline; at most ``limit`` are listed (a real gap is short, and a
    huge one must not fill memory)."""
    start = parse_name(first, segment_size)
    if start is None:
        raise ValueError(f"{first!r} is not a WAL segment file name")
    present = set()
    for name in archived:
        parsed = parse_name(name.split(".")[0], segment_size)
        if parsed:
            present.add(parsed[1])
    missing: list[str] = []
    expected = start[1]
    for number in sorted(n for n in present if n >= start[1]):
        while expected < number and len(missing) < limit:
            missing.append(segment_name(expected, segment_size))
            expected += 1
        if len(missing) >= limit:
            break
        expected = number + 1
    return missing


def lsn(text: str) -> int:
    """A WAL location as PostgreSQL prints it ("16/B374D848") as a byte position, to compare or
    subtract two of them: the high part is the log id, so the position is hi x 2^32 + lo."""
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)
