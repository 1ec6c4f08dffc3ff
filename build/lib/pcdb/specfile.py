"""Reading one spec file safely: text, YAML, and bounds, before any value is looked at.

A spec is the production change request, and it may come from anyone. So the file is read with
limits a hostile one cannot get past (the checks run on PyYAML's node graph, where an alias is a
reference, before anything is expanded):

- at most ``MAX_BYTES`` of UTF-8 text (no binary, no control characters);
- at most ``MAX_VALUES`` values once every alias is expanded (a "billion laughs" of a few hundred
  bytes would otherwise take gigabytes), and at most ``MAX_DEPTH`` levels of nesting;
- no key twice in one mapping (YAML lets the last silently win: a role written twice would
  get the second one's grants).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from pcdb.errors import Problem

MAX_BYTES = 256 * 1024      # prod.yaml is 16 KB
MAX_VALUES = 20_000         # prod.yaml + local.yaml expand to about 1 500
MAX_DEPTH = 24              # prod.yaml nests 6 deep

# libyaml's safe loader when PyYAML has it: ten times faster than the pure-Python one, and every
# runbook and CLI call loads a spec (two or three files).
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class SpecFileError(Exception):
    """The file cannot be read as a spec; ``problems`` say where and why."""

    def __init__(self, problems: list[Problem]):
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


def read(path: Path) -> tuple[object, dict[str, int]]:
    """The parsed document of ``path`` and the line of every dotted field path in it.

    Raises:
        SpecFileError: too large, not UTF-8 text, not YAML, too deep or too many values, a key twice.
    """
    raw = path.read_bytes()
    if len(raw) > MAX_BYTES:
        raise SpecFileError([Problem("", f"the file is {len(raw)} bytes; a spec is at most {MAX_BYTES} "
                                         "(the shipped prod.yaml is about 16 KB): is this the right file?")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise SpecFileError([Problem("", f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start}; "
                                         "a spec is a YAML text file", line)]) from None
    for number, row in enumerate(text.splitlines(), 1):
        bad = next((c for c in row if (ord(c) < 32 and c != "\t") or ord(c) == 127), None)
        if bad is not None:
            raise SpecFileError([Problem("", f"control character U+{ord(bad):04X} in the text; a spec is a "
                                             "YAML text file", number)])
    try:
        root = yaml.compose(text, Loader=LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SpecFileError([Problem("", f"not valid YAML: {getattr(exc, 'problem', None) or exc}",
                                     mark.line + 1 if mark else None)]) from None
    problems = _bounds(root) + _duplicate_keys(root)
    if problems:
        raise SpecFileError(problems)
    return yaml.load(text, Loader=LOADER), _line_index(root)


def _bounds(root: yaml.Node | None) -> list[Problem]:
    """Expanded size and depth, computed once per node (an alias is the node it refers to)."""
    sizes: dict[int, int] = {}
    depths: dict[int, int] = {}
    open_: set[int] = set()

    def walk(node: yaml.Node) -> tuple[int, int]:
        key = id(node)
        if key in sizes:
            return sizes[key], depths[key]
        if key in open_:
            raise SpecFileError([Problem("", "a YAML alias refers to itself (a recursive structure)",
                                         node.start_mark.line + 1)])
        open_.add(key)
        size, depth = 1, 0
        children = ([c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else
                    node.value if isinstance(node, yaml.SequenceNode) else [])
        for child in children:
            s, d = walk(child)
            size, depth = min(size + s, 10 * MAX_VALUES), max(depth, d + 1)
            if depth > MAX_DEPTH:
                break
        open_.discard(key)
        sizes[key], depths[key] = size, depth
        return size, depth

    if root is None:
        return []
    size, depth = walk(root)
    if depth > MAX_DEPTH:
        return [Problem("", f"nested more than {MAX_DEPTH} levels deep; a spec nests about 6")]
    if size > MAX_VALUES:
        return [Problem("", f"holds more than {MAX_VALUES} values, counting what each YAML alias repeats; a spec "
                            "has about 1 500: is this the right file? (write repeated parts out, without aliases)")]
    return []


def _duplicate_keys(node: yaml.Node | None, prefix: str = "", seen: set[int] | None = None) -> list[Problem]:
    seen = set() if seen is None else seen
    if node is None or id(node) in seen:
        return []
    seen.add(id(node))
    problems: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value)
            path = f"{prefix}.{name}" if prefix else name
            if name in first and name != "<<":
                problems.append(Problem(path, f"written twice (first at line {first[name]}); YAML would keep "
                                              "only the last one silently: keep one", key.start_mark.line + 1))
            first.setdefault(name, key.start_mark.line + 1)
            problems += _duplicate_keys(value, path, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _duplicate_keys(item, f"{prefix}.{i}", seen)
    return problems


def _line_index(node: yaml.Node | None, prefix: str = "", out: dict[str, int] | None = None) -> dict[str, int]:
    """Map dotted field paths to 1-based line numbers."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = f"{prefix}.{key.value}" if prefix else str(key.value)
            if path in out:
                continue
            out[path] = key.start_mark.line + 1
            _line_index(value, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = f"{prefix}.{i}"
            out[path] = item.start_mark.line + 1
            _line_index(item, path, out)
    return out
