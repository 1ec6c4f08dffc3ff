"""Files only their owner reads: reports, incident records, the health and capacity stores, the
orchestrator's home and Prefect's database, archives of customer rows.

Every such file is created with its mode (never left to the umask), and ``server status`` and
``sandbox status`` report any place that is looser than it must be (:func:`audit`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

DIR = 0o700
FILE = 0o600
ARCHIVE = 0o400


def private_dir(path: Path) -> Path:
    """``path`` exists and only its owner may enter it (0700); its parents are made as needed."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        os.chmod(path, DIR)
    return path


def write_private(path: Path, data: str | bytes, folder_mode: int | None = DIR) -> Path:
    """Write ``data`` to ``path``, readable by its owner only (0600), in a folder made 0700
    (``folder_mode=None`` leaves the folder's mode alone: a folder the operator chose)."""
    if folder_mode is None:
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), FILE)        # an earlier file of that name may have been looser
        handle.write(data.encode() if isinstance(data, str) else data)
    return path


def private_file(path: Path) -> Path:
    """Make ``path`` exist (empty if new) with mode 0600 before another library opens it
    (SQLite gives its -wal and -shm files the database file's mode)."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE)
    os.fchmod(fd, FILE)
    os.close(fd)
    return path


def looser(path: Path, mode: int) -> str | None:
    """Why ``path`` is readable by more than its mode allows, or None."""
    try:
        have = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    extra = have & ~mode & 0o077
    if not extra:
        return None
    return f"{path} is mode {have:04o}, readable by others: chmod {mode:04o} {path}"


def audit(places: Iterable[tuple[Path, int, int | None]]) -> list[str]:
    """Problems for each (folder or file, its mode, the mode of the files inside or None)."""
    problems = []
    for path, mode, inner in places:
        if (problem := looser(path, mode)) is not None:
            problems.append(problem)
        if inner is not None and path.is_dir():
            for child in sorted(path.rglob("*")):
                if (problem := looser(child, inner if child.is_file() else DIR)) is not None:
                    problems.append(problem)
    return problems
