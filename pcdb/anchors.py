"""Anchors of the run ledger, kept outside the database it describes.

Every appended ledger row also writes ``(seq, row hash)`` into the environment's evidence store,
write-once: a file per row (mode 0400, in a 0700 folder) in the sandbox's backup store, a blob
per row in the immutable evidence container on Azure. Whoever owns the database can edit,
shorten or drop the ledger and recompute every hash; they cannot make the anchors agree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

from pcdb.errors import PcdbError
from pcdb.private import private_dir


class AnchorError(PcdbError):
    """An anchor could not be written."""


class AnchorConflict(AnchorError):
    """An anchor already written disagrees with the ledger: the chain was rewritten."""


@runtime_checkable
class Anchors(Protocol):
    """Where a ledger's anchors are kept (one per row, write-once)."""

    where: str

    def put(self, seq: int, row_hash: str) -> None:
        """Write the anchor of row ``seq``; an identical one already there is left as it is.

        Raises:
            AnchorError: row ``seq`` was anchored with another hash (the chain was rewritten),
                or the store could not be written.
        """

    def read(self) -> dict[int, str]:
        """Every anchor: seq -> row hash."""


class FileAnchors:
    """Anchors as files ``<folder>/<seq, 12 digits>`` holding the row hash, each 0400, the
    folder 0700: written once with O_EXCL, never rewritten."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.where = str(folder)

    def _path(self, seq: int) -> Path:
        return self.folder / f"{seq:012d}"

    def put(self, seq: int, row_hash: str) -> None:
        private_dir(self.folder.parent)
        private_dir(self.folder)
        path = self._path(seq)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        except FileExistsError:
            kept = path.read_text().strip()
            if kept != row_hash:
                raise AnchorConflict(f"row {seq} of the ledger was anchored in {path} with hash {kept[:16]}…, "
                                  f"not {row_hash[:16]}…: the chain was rewritten after it was anchored") from None
            return
        except OSError as exc:
            raise AnchorError(f"cannot write the ledger anchor {path}: {exc.strerror}") from exc
        with os.fdopen(fd, "w") as handle:
            handle.write(row_hash + "\n")

    def read(self) -> dict[int, str]:
        if not self.folder.is_dir():
            return {}
        out = {}
        for path in self.folder.iterdir():
            if path.name.isdigit():
                out[int(path.name)] = path.read_text().strip()
        return out


class MemoryAnchors:
    """Anchors in memory (the in-memory target, policy tests)."""

    def __init__(self) -> None:
        self.where = "memory"
        self.kept: dict[int, str] = {}

    def put(self, seq: int, row_hash: str) -> None:
        if self.kept.setdefault(seq, row_hash) != row_hash:
            raise AnchorConflict(f"row {seq} was anchored with another hash: the chain was rewritten")

    def read(self) -> dict[int, str]:
        return dict(self.kept)
