"""Units are converted exactly to each parameter's own unit (R-PAR-2, C-3, C-4)."""

import pytest

from pcdb import params
from pcdb.units import UnitError, convert, parse_duration, parse_size


@pytest.mark.parametrize("name, declared, setting, unit", [
    ("shared_buffers", "4GB", "524288", "8kB"),              # C-3: not 4194304
    ("effective_cache_size", "12GB", "1572864", "8kB"),      # C-3: not 12582912
    ("work_mem", "32MB", "32768", "kB"),
    ("maintenance_work_mem", "512MB", "524288", "kB"),
    ("wal_buffers", "16MB", "2048", "8kB"),
    ("max_wal_size", "4GB", "4096", "MB"),
    ("idle_in_transaction_session_timeout", "30min", "1800000", "ms"),
    ("log_min_duration_statement", "1000ms", "1000", "ms"),
    ("log_min_duration_statement", "1s", "1000", "ms"),
    ("log_rotation_age", "1d", "1440", "min"),
    ("log_rotation_size", "100MB", "102400", "kB"),
])
def test_sizes_and_durations_are_converted_to_the_parameters_unit(name, declared, setting, unit):
    value = params.canonical(name, declared)
    assert (value.setting, value.unit) == (setting, unit)


def test_non_unit_values_are_made_canonical():
    assert params.canonical("max_connections", 200).setting == "200"
    assert params.canonical("checkpoint_completion_target", 0.9).setting == "0.9"
    assert params.canonical("track_functions", "ALL").setting == "all"
    assert params.canonical("log_connections", True).setting == "on"
    assert params.canonical("log_file_mode", "0640").setting == str(0o640)
    assert params.canonical("shared_preload_libraries", ["pg_stat_statements", "pgaudit"]).setting == \
        "pg_stat_statements,pgaudit"


@pytest.mark.parametrize("name, value, message", [
    ("log_slow_queries", "on", "MySQL's parameter"),                    # C-4
    ("shared_bufers", "1GB", "did you mean 'shared_buffers'"),
    ("shared_buffers", 4194304, "bare number is ambiguous"),            # C-3
    ("shared_buffers", "4194304", "bare number is ambiguous"),
    ("shared_buffers", "4gb", "write 'GB'"),
    ("shared_buffers", "4 parsecs", "not a size unit"),
    ("idle_in_transaction_session_timeout", "30MB", "not a time unit"),
    ("work_mem", "1.5kB", "not a whole number"),
    ("max_connections", 0, "outside the allowed 1..262143"),
    ("track_functions", "some", "use one of none, pl, all"),
    ("log_connections", "maybe", "not a boolean"),
])
def test_bad_parameter_values_are_rejected_with_what_is_allowed(name, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        params.canonical(name, value)


def test_disabled_values_need_no_unit():
    assert params.canonical("log_min_duration_statement", -1).setting == "-1"
    assert params.canonical("idle_in_transaction_session_timeout", 0).setting == "0"


def test_read_back_comparison_understands_postgres_formats():
    assert params.same_setting("log_file_mode", str(0o640), "0640")
    assert params.same_setting("shared_preload_libraries", "pg_stat_statements,pgaudit",
                               "pg_stat_statements, pgaudit")
    assert not params.same_setting("shared_buffers", "524288", "16384")
    assert params.same_setting("checkpoint_completion_target", "0.9", "0.9")


def test_plain_sizes_and_durations():
    assert parse_size("256GB") == 256 * 1024**3
    assert parse_duration("35d").days == 35
    assert convert("64GB", "MB") == 65536
    with pytest.raises(UnitError, match="no unit"):
        parse_size("256")
    with pytest.raises(UnitError, match="finer than a microsecond"):
        parse_duration("0.5us")
