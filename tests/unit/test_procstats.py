"""The sandbox's stand-in for Azure Monitor's disk IOPS: the operations of the block device that
holds a folder, from /proc/diskstats. The test servers keep their files on a tmpfs when the
machine has one (tests/conftest.py), so the device's counting is checked here, on a folder that
lives on a disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pcdb.sandbox import procstats


def _on_a_disk() -> Path | None:
    """A folder of this machine on a block device /proc/diskstats counts (None in a container
    whose every file system is an overlay or a tmpfs)."""
    counted = {tuple(int(f) for f in line.split()[:2]) for line in Path("/proc/diskstats").read_text().splitlines()}
    for folder in (Path(__file__).parent, Path.home(), Path("/var/tmp"), Path("/")):
        device = os.stat(folder).st_dev
        if (os.major(device), os.minor(device)) in counted:
            return folder
    return None


def test_a_folder_on_a_disk_counts_its_devices_operations_and_they_only_grow():
    folder = _on_a_disk()
    if folder is None:
        pytest.skip("no file system of this machine is on a block device /proc/diskstats counts")
    before = procstats.disk_operations(folder)
    probe = folder / f".pcdb-procstats-{os.getpid()}"
    try:
        with open(probe, "wb") as f:                     # an operation that reaches the device
            f.write(os.urandom(1 << 16))
            f.flush()
            os.fsync(f.fileno())
    except PermissionError:
        probe = None
    after = procstats.disk_operations(folder)
    if probe is not None:
        probe.unlink()
    assert before is not None and before >= 0 and after >= before
    if probe is not None:
        assert after > before


def test_a_folder_on_a_tmpfs_has_no_disk_to_count(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.major(os.stat(shm).st_dev) != 0:
        pytest.skip("no tmpfs at /dev/shm")
    assert procstats.disk_operations(shm) is None
    assert procstats.disk_operations(tmp_path / "missing") is None
