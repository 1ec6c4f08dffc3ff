"""WAL segment arithmetic at the log-id boundary (issue: 4 GiB of WAL made verify-backups count
4.29 billion missing segments and run out of memory)."""

import pytest

from pcdb.wal import lsn, missing_segments, parse_name, segment_name

MB16 = 16 * 1024 * 1024


def names(*parts: str, timeline: str = "00000001") -> list[str]:
    return [timeline + p for p in parts]


def test_the_segment_after_ff_is_the_next_log_id_not_a_gap():
    archived = names("00000000000000FE", "00000000000000FF", "0000000100000000", "0000000100000001")
    assert missing_segments(archived, archived[0], MB16) == []
    assert parse_name("000000010000000100000000", MB16)[1] == parse_name("0000000100000000000000FF", MB16)[1] + 1


def test_a_segment_missing_at_the_boundary_is_named():
    archived = names("00000000000000FE", "0000000100000000", "0000000100000001")
    assert missing_segments(archived, archived[0], MB16) == ["00000000000000FF"]
    archived = names("00000000000000FF", "0000000100000001")
    assert missing_segments(archived, archived[0], MB16) == ["0000000100000000"]


def test_other_segment_sizes_have_other_boundaries():
    size = 64 * 1024 * 1024                       # 64 segments per log id
    archived = names("000000000000003F", "0000000100000000")
    assert missing_segments(archived, archived[0], size) == []
    assert parse_name("0000000100000000000000FF", size) is None  # not a name a 64 MB server writes
    assert segment_name(64, size) == "0000000100000000"


def test_timelines_partial_files_and_history_files():
    archived = ["000000010000000000000003", "000000020000000000000004.partial", "00000002.history",
                "000000020000000000000005", "000000010000000000000003.00000028.backup"]
    assert missing_segments(archived, "000000010000000000000003", MB16) == []


def test_a_huge_gap_is_reported_without_listing_billions():
    archived = names("0000000000000001", "000000FF000000FF")
    gap = missing_segments(archived, archived[0], MB16, limit=1000)
    assert len(gap) == 1000 and gap[0] == "0000000000000002"


def test_a_name_that_is_not_a_segment_is_refused():
    with pytest.raises(ValueError, match="not a WAL segment file name"):
        missing_segments([], "backup_label", MB16)


def test_a_wal_location_is_a_byte_position_across_log_ids():
    assert lsn("0/0") == 0
    assert lsn("0/7DEB608") == 0x7DEB608
    assert lsn("1/0") - lsn("0/FFFFFFFF") == 1          # the next log id follows the last byte of the one before
    assert lsn("16/B374D848") > lsn("9/FFFFFFFF")        # compared as numbers, not as text
