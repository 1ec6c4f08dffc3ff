"""What the sandbox's servers use of this machine, read from /proc: the stand-in for Azure Monitor's
cpu_percent, memory_percent and disk_iops_consumed_percentage (R-MON-1).

- CPU: user + system time of the primary's postmaster and its children (a cumulative counter; the
  health runbook turns two readings into a percentage of the machine's cores).
- Memory: the proportional set size (PSS: shared buffers counted once across the backends) of the
  same processes, against the machine's memory.
- IOPS: reads and writes completed by the block device the sandbox's data lives on (/proc/diskstats;
  a cumulative counter), against the spec's provisioned IOPS. None where the folder's file system
  has no block device of its own (tmpfs, some container overlays).
"""

from __future__ import annotations

import os
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def server_pids(data_dir: Path) -> list[int]:
    """The postmaster of ``data_dir`` (postmaster.pid) and every process it started."""
    try:
        postmaster = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return []
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:  # field 4 of stat: the parent's pid
            pids.append(int(entry.name))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by the processes, and (the first pid being the
    postmaster) by the children that have already exited: a backend's time is not lost when its
    connection closes."""
    total = 0
    for i, pid in enumerate(pids):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        if i == 0:
            total += int(fields[13]) + int(fields[14])  # cutime, cstime: the exited children's
    return total / _CLOCK_TICKS


def memory_bytes(pids: list[int]) -> int:
    """Proportional set size of the processes (shared memory counted once across them)."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
                break
    return total


def disk_operations(path: Path) -> float | None:
    """Reads + writes completed so far by the block device holding ``path`` (None: no such device)."""
    try:
        device = os.stat(path).st_dev
    except OSError:
        return None
    wanted = (os.major(device), os.minor(device))
    try:
        lines = Path("/proc/diskstats").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 8 and (int(fields[0]), int(fields[1])) == wanted:
            return float(int(fields[3]) + int(fields[7]))  # reads completed, writes completed
    return None
