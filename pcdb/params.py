"""Server parameters: validated against PostgreSQL's own catalog, converted to each one's unit.

The catalog (``data/pg15_settings.json``) is pg_settings of a PostgreSQL 15 server with
pg_stat_statements loaded: name, type, unit, context, bounds and enum values. A spec value is
turned into the canonical ``setting`` PostgreSQL reports for it, so a read-back compares exactly.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from importlib import resources

from pcdb.units import UnitError, convert

# Parameters people write that PostgreSQL does not have, with what to use instead.
_FOREIGN = {
    "log_slow_queries": "log_slow_queries is MySQL's parameter, not PostgreSQL's (C-4); "
    "PostgreSQL logs slow statements with log_min_duration_statement, which the spec already sets",
    "slow_query_log": "slow_query_log is MySQL's parameter (C-4); use log_min_duration_statement",
    "long_query_time": "long_query_time is MySQL's parameter (C-4); use log_min_duration_statement",
}
# Dotted parameters belong to extensions; we accept those of the extensions we load. The catalog
# holds pg_stat_statements' own (it was read with the library loaded); these are the others'.
EXTENSION_PREFIXES = ("pg_stat_statements.", "pgaudit.", "auto_explain.")
_EXTENSION_PARAMETERS = {
    "auto_explain.": ("log_analyze", "log_buffers", "log_format", "log_level", "log_min_duration",
                      "log_nested_statements", "log_parameter_max_length", "log_settings", "log_timing",
                      "log_triggers", "log_verbose", "log_wal", "sample_rate"),
    "pgaudit.": ("log", "log_catalog", "log_client", "log_level", "log_parameter", "log_parameter_max_size",
                 "log_relation", "log_rows", "log_statement", "log_statement_once", "role"),
}
# Libraries a spec may preload: shipped with PostgreSQL's contrib or allowed by Azure's
# shared_preload_libraries parameter, and known to this runbook.
PRELOAD_LIBRARIES = ("pg_stat_statements", "auto_explain", "pgaudit", "pg_prewarm", "pg_cron", "pg_hint_plan",
                     "pg_partman_bgw", "pg_failover_slots", "timescaledb")
# Parameters whose value is a list of separately quoted items (GUC_LIST_QUOTE): written as
# 'a', 'b' by ALTER SYSTEM, never as one literal 'a,b'.
LIST_PARAMETERS = ("shared_preload_libraries", "local_preload_libraries", "session_preload_libraries",
                   "search_path", "temp_tablespaces")

_TOPOLOGY = ("the topology owns it: pcdb sets it on each server for its role (primary, synchronous standby, "
             "read replica) and the failovers rely on it")
_NETWORK = ("the network section owns where the servers listen (the sandbox: 127.0.0.1 only; Azure: the "
            "VNet), and access is network.allowed_subnets")
_TLS = "security.tls owns TLS (minimum version, certificates; the sandbox runs TLS 1.3 only)"
_BACKUP = ("the backup section owns WAL archiving and restores; a command here would run as the server's OS "
           "user")
_CODE = "it loads code from a path the spec names; preload libraries with shared_preload_libraries"
_UNSAFE = "a developer option that can corrupt data or hide corruption; never in production"
OWNED: dict[str, str] = {
    **dict.fromkeys(("listen_addresses", "port", "unix_socket_directories", "unix_socket_group",
                     "unix_socket_permissions"), _NETWORK),
    **dict.fromkeys(("ssl", "ssl_cert_file", "ssl_key_file", "ssl_ca_file", "ssl_crl_file", "ssl_crl_dir",
                     "ssl_ciphers", "ssl_min_protocol_version", "ssl_max_protocol_version", "ssl_passphrase_command",
                     "ssl_passphrase_command_supports_reload", "ssl_prefer_server_ciphers", "ssl_ecdh_curve",
                     "ssl_dh_params_file"), _TLS),
    "password_encryption": "security owns authentication: passwords are SCRAM-SHA-256 verifiers only",
    "krb_server_keyfile": "security owns authentication (SCRAM over TLS)",
    "db_user_namespace": "security owns authentication (SCRAM over TLS)",
    **dict.fromkeys(("archive_mode", "archive_command", "archive_library", "archive_timeout", "restore_command",
                     "archive_cleanup_command", "recovery_end_command", "recovery_target", "recovery_target_lsn",
                     "recovery_target_name", "recovery_target_time", "recovery_target_xid",
                     "recovery_target_action", "recovery_target_inclusive", "recovery_target_timeline"), _BACKUP),
    **dict.fromkeys(("primary_conninfo", "primary_slot_name", "promote_trigger_file", "synchronous_standby_names",
                     "synchronous_commit", "hot_standby", "hot_standby_feedback", "wal_level", "wal_log_hints",
                     "cluster_name", "wal_retrieve_retry_interval", "full_page_writes", "fsync",
                     "wal_receiver_timeout", "wal_sender_timeout"), _TOPOLOGY),
    **dict.fromkeys(("hba_file", "ident_file", "config_file", "data_directory", "external_pid_file",
                     "logging_collector", "log_directory", "log_destination"),
                    "the server's own files: pcdb places them, and the runbooks read the logs where it put them"),
    **dict.fromkeys(("dynamic_library_path", "local_preload_libraries", "session_preload_libraries",
                     "jit_provider"), _CODE),
    "default_transaction_read_only": ("the storage guard owns it: the server turns read-only at 95 % of its storage, "
                                      "as Azure does (pcdb/sandbox/storage.py)"),
    **dict.fromkeys(("allow_system_table_mods", "ignore_system_indexes", "zero_damaged_pages",
                     "ignore_checksum_failure", "ignore_invalid_pages", "data_sync_retry"), _UNSAFE),
}
_BOOL_WORDS = {"on": "on", "off": "off", "true": "on", "false": "off", "yes": "on", "no": "off",
               "1": "on", "0": "off"}


@dataclass(frozen=True)
class ParamInfo:
    """One row of pg_settings that matters for validation."""

    name: str
    vartype: str  # bool | integer | real | string | enum
    unit: str | None
    context: str  # postmaster = restart needed; sighup = reload; user/superuser = reload
    min: str | None
    max: str | None
    enumvals: tuple[str, ...] | None

    @property
    def needs_restart(self) -> bool:
        return self.context == "postmaster"


@dataclass(frozen=True)
class ParamValue:
    """A spec value made canonical: ``setting`` is what pg_settings.setting reports."""

    name: str
    setting: str
    unit: str | None
    needs_restart: bool
    declared: str


@cache
def catalog() -> dict[str, ParamInfo]:
    """Return PostgreSQL's parameters by name (lower case)."""
    raw = json.loads(resources.files("pcdb").joinpath("data/pg15_settings.json").read_text())
    return {
        row["name"].lower(): ParamInfo(
            name=row["name"], vartype=row["vartype"], unit=row["unit"], context=row["context"],
            min=row["min"], max=row["max"],
            enumvals=tuple(row["enumvals"]) if row["enumvals"] else None,
        )
        for row in raw
    }


def lookup(name: str) -> ParamInfo | None:
    """Return the catalog entry of ``name``; None for an accepted extension parameter.

    Raises:
        ValueError: PostgreSQL has no such parameter (with a suggestion where one is close).
    """
    key = name.lower()
    if key in _FOREIGN:
        raise ValueError(_FOREIGN[key])
    if key in catalog():
        return catalog()[key]
    for prefix, names in _EXTENSION_PARAMETERS.items():
        if key.startswith(prefix):
            if key.removeprefix(prefix) in names:
                return None
            close = difflib.get_close_matches(key.removeprefix(prefix), names, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; it has {', '.join(names)}"
            raise ValueError(f"{name!r} is not a setting of {prefix.rstrip('.')}{hint}")
    if key.startswith(EXTENSION_PREFIXES):  # pg_stat_statements.*: its own are in the catalog
        close = difflib.get_close_matches(key, [k for k in catalog() if k.startswith(key.split(".")[0] + ".")], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{name!r} is not a setting of {key.split('.')[0]}{hint}")
    close = difflib.get_close_matches(key, catalog().keys(), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{name!r} is not a PostgreSQL parameter{hint}")


def _parse_int(text: str) -> int:
    # PostgreSQL reads integers with strtol(base 0): '0640' is octal (log_file_mode).
    text = text.strip()
    if len(text) > 1 and text.startswith("0") and text.isdigit():
        return int(text, 8)
    return int(text, 0)


def canonical(name: str, value: object, owned: bool = False) -> ParamValue:
    """Validate ``value`` for parameter ``name`` and return its canonical setting.

    A parameter with a unit needs a unit in the spec ('4GB', '30min'); a bare number is
    ambiguous (the document's shared_buffers 4194304 meant kB, but the unit is 8kB: C-3),
    except 0 and -1, which mean "off" for such parameters.

    ``owned``: pcdb's own setting of a parameter the topology or security owns (never a spec's).

    Raises:
        ValueError: unknown parameter, owned by the topology or security, wrong type, bad unit,
            out of range, not an allowed value.
    """
    if name.lower() in OWNED and not owned:
        raise ValueError(f"{name} cannot be set in the spec: {OWNED[name.lower()]}")
    info = lookup(name)
    declared = _declared(value)
    if any(ord(c) < 32 or ord(c) == 127 for c in declared):
        raise ValueError("a control character (newline, tab, ...) in the value; a setting is one line")
    if len(declared) > 1024:
        raise ValueError(f"a value of {len(declared)} characters; a setting is at most 1024")
    if name.lower() in LIST_PARAMETERS:
        items = [x.strip() for x in declared.split(",")]
        if any(not x or not x.replace("_", "").replace("-", "").replace("$", "").isalnum() for x in items):
            raise ValueError(f"{declared!r}: give a list of names (e.g. [pg_stat_statements, auto_explain])")
        if len(set(items)) != len(items):
            raise ValueError(f"{declared!r} names a library twice")
        if name.lower() == "shared_preload_libraries":
            unknown = [x for x in items if x not in PRELOAD_LIBRARIES]
            if unknown:
                raise ValueError(f"{', '.join(unknown)}: not a library this runbook preloads; allowed: "
                                 f"{', '.join(PRELOAD_LIBRARIES)}")
        declared = ",".join(items)
    if info is None:
        return ParamValue(name, declared, None, True, declared)
    setting = _setting(info, value, declared)
    return ParamValue(info.name, setting, info.unit, info.needs_restart, declared)


def _declared(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v).strip() for v in value)
    return str(value)


def _setting(info: ParamInfo, value: object, declared: str) -> str:
    if info.vartype == "bool":
        word = _BOOL_WORDS.get(declared.lower())
        if word is None:
            raise ValueError(f"{declared!r} is not a boolean; use on or off")
        return word
    if info.vartype == "enum":
        allowed = info.enumvals or ()
        for option in allowed:
            if option.lower() == declared.lower():
                return option
        raise ValueError(f"{declared!r} is not allowed; use one of {', '.join(allowed)}")
    if info.vartype == "string":
        return declared
    return _number(info, value, declared)


def _number(info: ParamInfo, value: object, declared: str) -> str:
    if isinstance(value, bool):
        raise ValueError(f"{declared!r} is not a number")
    if info.unit and isinstance(value, str) and not declared.strip().lstrip("-").replace(".", "").isdigit():
        try:
            amount = convert(declared, info.unit)
        except UnitError as exc:
            raise ValueError(str(exc)) from None
    else:
        try:
            amount = Fraction(_parse_int(declared)) if info.vartype == "integer" else Fraction(declared)
        except ValueError:
            raise ValueError(f"{declared!r} is not a number") from None
        if info.unit and amount not in (0, -1):
            raise ValueError(
                f"{declared!r} has no unit, but {info.name} is measured in {info.unit}, so a bare "
                f"number is ambiguous (C-3); write it with a unit, e.g. '4GB' or '30min'"
            )
    if info.vartype == "integer" and amount.denominator != 1:
        raise ValueError(f"{declared!r} is not a whole number of {info.unit or 'units'}")
    _check_range(info, amount, declared)
    if info.vartype == "integer":
        return str(int(amount))
    return _real(amount)


def _check_range(info: ParamInfo, amount: Fraction, declared: str) -> None:
    low = Fraction(info.min) if info.min is not None else None
    high = Fraction(info.max) if info.max is not None else None
    if (low is not None and amount < low) or (high is not None and amount > high):
        unit = f" {info.unit}" if info.unit else ""
        raise ValueError(
            f"{declared!r} is {_real(amount)}{unit}, outside the allowed {info.min}..{info.max}{unit}"
        )


def _real(amount: Fraction) -> str:
    number = float(amount)
    return str(int(number)) if number.is_integer() else repr(number)


def same_setting(name: str, wanted: str, actual: str) -> bool:
    """True when pg_settings' ``actual`` equals the canonical ``wanted`` value of ``name``."""
    info = catalog().get(name.lower())
    if info is None or info.vartype in ("string",):
        if name.lower() == "shared_preload_libraries":
            return _libs(wanted) == _libs(actual)
        return wanted.strip() == actual.strip()
    if info.vartype == "integer":
        return _parse_int(wanted) == _parse_int(actual)
    if info.vartype == "real":
        return abs(float(wanted) - float(actual)) <= 1e-9 * max(1.0, abs(float(wanted)))
    return wanted.lower() == actual.lower()


def _libs(text: str) -> list[str]:
    return sorted(part.strip().strip('"') for part in text.split(",") if part.strip())
