"""Loading a spec: ``extends:`` followed, merged, validated section by section and across
sections; every problem reported at once with its file, line and field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)

from pcdb import params, specfile
from pcdb.config.environment import Environment
from pcdb.errors import ConfigError, Problem
from pcdb.paths import DEPLOYMENTS


def spec_path(env: str | Path) -> Path:
    """Resolve an environment name ('local') or a path to its YAML file."""
    candidate = Path(env)
    if candidate.suffix in (".yaml", ".yml"):
        return candidate
    return DEPLOYMENTS / f"{env}.yaml"


def load_environment(env: str | Path) -> Environment:
    """Load and validate an environment spec (following ``extends:`` to its parent spec).

    Raises:
        ConfigError: the file is missing, not YAML, or has any invalid field.
    """
    path = spec_path(env)
    data, lines = _load_raw(path, seen=())
    return validate(data, _shown(path), lines)


def _load_raw(path: Path, seen: tuple[Path, ...], referrer: tuple[str, int | None] | None = None
              ) -> tuple[dict, dict[str, tuple[str, int]]]:
    shown = _shown(path)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in DEPLOYMENTS.glob("*.yaml")))
        what = "is a folder, not a spec file" if path.exists() else "does not exist"
        if referrer is not None:  # name the file that refers to it, at its extends: line
            raise ConfigError(referrer[0], [Problem("extends", f"the parent spec {shown} {what}; "
                                                    f"known environments: {known}", referrer[1])])
        raise ConfigError(shown, [Problem("", f"no such environment spec ({what}); known: {known}")])
    try:
        data, index = specfile.read(path)
    except specfile.SpecFileError as exc:
        raise ConfigError(shown, exc.problems) from None
    except OSError as exc:
        raise ConfigError(shown, [Problem("", f"cannot read the file: {exc.strerror}")]) from None
    lines = {k: (shown, v) for k, v in index.items()}
    if not isinstance(data, dict):
        raise ConfigError(shown, [Problem("", "the spec must be a mapping of sections (server:, security:, ...)", 1)])
    parent_name = data.pop("extends", None)
    if parent_name is None:
        return data, lines
    if not isinstance(parent_name, str) or not parent_name.strip():
        raise ConfigError(shown, [Problem("extends", "name the parent spec: an environment name (prod) or "
                                                     "a spec file path", index.get("extends"))])
    parent = spec_path(parent_name) if "/" not in parent_name else path.parent / parent_name
    if parent.resolve() in seen or parent.resolve() == path.resolve():
        raise ConfigError(shown, [Problem("extends", f"{parent_name!r} extends itself in a loop",
                                          index.get("extends"))])
    base, base_lines = _load_raw(parent, (*seen, path.resolve()), (shown, index.get("extends")))
    # What the child replaces whole (a list, a scalar, a secret reference) keeps none of the parent's
    # lines below it: a problem inside it is the child's.
    replaced = _replaced_paths(data)
    base_lines = {k: v for k, v in base_lines.items() if not any(k.startswith(r + ".") for r in replaced)}
    return _merge(base, data), {**base_lines, **lines}


def _replaced_paths(data: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and not (_SECRET_KEYS & set(value)):
            out += _replaced_paths(value, path)
        else:
            out.append(path)
    return out


_SECRET_KEYS = {"env", "prefect_secret", "file", "key_vault", "generate"}


def _merge(base: dict, override: dict) -> dict:
    """Deep-merge: mappings merge key by key, lists and scalars replace, null removes.

    A secret reference ({env: ...}, {generate: true}) replaces the parent's whole: a merge
    would leave two sources.
    """
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict) and not (
                _SECRET_KEYS & set(value)):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def validate(data: dict, file: str = "<spec>",
             lines: dict[str, tuple[str, int]] | None = None) -> Environment:
    """Validate a parsed spec; raise ConfigError with every problem found."""
    lines = lines or {}
    problems = _parameter_problems(data, lines)  # also when other fields are wrong: every problem at once
    problems += _duplicate_entries(data, lines)
    environment = None
    try:
        environment = Environment.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(err, lines) for err in exc.errors()
                    if not str(err["loc"][0]).startswith("parameters")] + problems
    if environment is not None:
        from pcdb.config import checks

        problems += _semantic_problems(environment, lines)
        problems += checks.problems(environment, lambda path: _line_of(path, lines))
    if problems:
        raise ConfigError(file, problems)
    return environment


# Lists of mappings and the fields that tell their entries apart: an entry whose identity is
# written twice is refused, as a key written twice is (the second would win, or both would run).
_IDENTITIES = {
    "install.approval.approvers": (("name",),), "install.phases": (("number",),),
    "network.allowed_subnets": (("name",), ("cidr",)), "monitoring.system_metrics": (("metric", "level"),),
    "monitoring.performance_targets": (("metric",),), "monitoring.business_metrics": (("metric",),),
    "monitoring.alert_rules": (("name",),), "monitoring.azure_metric_alerts": (("name",),),
    "monitoring.health.extra_rules": (("name",),), "operations.incident_severities": (("level",),),
    "operations.cost.price_table": (("component",),), "dr.region_failover_steps": (("step",),),
    "security.roles": (("name",),)}


def _duplicate_entries(data: Any, lines: dict[str, tuple[str, int]], path: str = "") -> list[Problem]:
    """Every list: a value written twice, or an entry whose identity (name, metric...) is."""
    problems: list[Problem] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if path == "" and key == "parameters" or path == "security" and key == "audit":
                continue        # server parameters: their own check knows which lists they are
            problems += _duplicate_entries(value, lines, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list):
        seen: dict = {}
        for i, item in enumerate(data):
            if isinstance(item, (str, int, float, bool)) and not isinstance(item, bool):
                if item in seen:
                    problems.append(Problem(f"{path}.{i}", f"{item!r} is written twice (also entry {seen[item]}): "
                                            "remove one; an entry written twice is refused like a key written twice",
                                            _line_of(f"{path}.{i}", lines) or _line_of(path, lines)))
                seen.setdefault(item, i)
            elif isinstance(item, dict):
                problems += _duplicate_entries(item, lines, f"{path}.{i}")
        for fields in _IDENTITIES.get(path, ()):
            ids: dict = {}
            for i, item in enumerate(data):
                if isinstance(item, dict) and all(f in item for f in fields):
                    identity = tuple(str(item[f]) for f in fields)
                    if identity in ids:
                        problems.append(Problem(f"{path}.{i}", f"{' '.join(fields)} {' '.join(identity)!r} is written "
                                                f"twice (also entry {ids[identity]}): each entry once",
                                                _line_of(f"{path}.{i}", lines) or _line_of(path, lines)))
                    ids.setdefault(identity, i)
    return problems


def _parameter_problems(data: dict, lines: dict[str, tuple[str, int]]) -> list[Problem]:
    """Each server parameter against PostgreSQL's catalog, read from the raw spec."""
    problems: list[Problem] = []
    security = data.get("security") if isinstance(data.get("security"), dict) else {}
    sections = (("parameters", data.get("parameters")), ("security.audit", security.get("audit")))
    for section, values in sections:
        if values is None:
            continue
        if not isinstance(values, dict):
            problems.append(Problem(section, "a mapping of parameter: value", _line_of(section, lines)))
            continue
        for name, value in values.items():
            path = f"{section}.{name}"
            if isinstance(value, (dict, type(None))):
                problems.append(Problem(path, "a parameter's value is a number, a word, or a list of words",
                                        _line_of(path, lines)))
                continue
            try:
                params.canonical(str(name), value)
            except ValueError as exc:
                problems.append(Problem(path, str(exc), _line_of(path, lines)))
    return problems


def _problem(err: dict, lines: dict[str, tuple[str, int]]) -> Problem:
    loc = [str(part) for part in err["loc"] if not str(part).startswith("function-")]
    path = ".".join(loc)
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown field; remove it or check its spelling"
    elif err["type"] == "missing":
        message = "required field is missing"
    elif "input" in err and not isinstance(err["input"], (dict, list)) and "secret" not in message:
        message = f"{err['input']!r}: {message}"
    return Problem(path, message, _line_of(path, lines))


def _semantic_problems(env: Environment, lines: dict[str, tuple[str, int]]) -> list[Problem]:
    problems: list[Problem] = []
    for name in set(env.parameters) & set(env.security.audit):
        a, b = env.parameters[name], env.security.audit[name]
        if str(a) != str(b):
            path = f"security.audit.{name}"
            problems.append(Problem(path, f"{b!r} contradicts parameters.{name} = {a!r}; keep one",
                                    _line_of(path, lines)))
    known = set(env.notifications.channels)
    routes = [(f"monitoring.alert_rules.{i}.channels", r.channels)
              for i, r in enumerate(env.monitoring.alert_rules)]
    routes += [(f"notifications.routing.{lvl}", chans) for lvl, chans in env.notifications.routing.items()]
    routes += [(f"monitoring.health.extra_rules.{i}.channels", r.channels or [])
               for i, r in enumerate(env.monitoring.health.extra_rules)]
    for name, channel in env.notifications.channels.items():
        if channel.block.startswith("email-server-credentials/") and not channel.recipients:
            path = f"notifications.channels.{name}.recipients"
            problems.append(Problem(path, "an SMTP channel sends to its recipients: name at least one",
                                    _line_of(f"notifications.channels.{name}", lines)))
    if env.monitoring.health.disabled_rules:
        from pcdb.rules import catalog

        everything = {r.name for r in catalog(env.model_copy(update={"monitoring": env.monitoring.model_copy(
            update={"health": env.monitoring.health.model_copy(update={"disabled_rules": []})})}))}
        for name in env.monitoring.health.disabled_rules:
            if name not in everything:
                path = "monitoring.health.disabled_rules"
                problems.append(Problem(path, f"{name!r} is not a health rule; the rules are "
                                              f"{', '.join(sorted(everything))}", _line_of(path, lines)))
    for path, channels in routes:
        for channel in channels:
            if channel not in known:
                problems.append(Problem(path, f"{channel!r} is not a channel in notifications.channels "
                                              f"({', '.join(sorted(known))})", _line_of(path, lines)))
    return problems


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _line_of(path: str, lines: dict[str, tuple[str, int]]) -> tuple[str, int] | None:
    """The (file, line) where ``path`` or its nearest parent is written."""
    parts = path.split(".")
    while parts:
        found = lines.get(".".join(parts))
        if found:
            return found
        parts.pop()
    return None
