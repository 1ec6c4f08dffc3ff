"""Split a compiled lock (uv pip compile --extra test --extra k8s --generate-hashes) in two.

prefect-kubernetes is needed by one test only (tests/unit/test_k8s.py renders the AKS job
template with its worker). Installed beside Prefect it is a Prefect *collection*: every process
that loads a block, starts a worker or a server imports it and the Kubernetes client, about
0.8 CPU-s each (docs/benchmarks.md), so the tests and benchmarks would pay for what production
never installs. It and what only it needs go to a second lock, installed apart (scripts/setup.sh).

    python scripts/split_lock.py COMPILED MAIN_OUT APART_OUT

What goes apart: prefect-kubernetes and every package that only it, or only packages already
apart, pull in ("# via" of uv's output). Both outputs keep uv's blocks as they are, hashes included.
"""

from __future__ import annotations

import re
import sys

APART_ROOT = "prefect-kubernetes"
HEADER_MAIN = ("# The locked dependencies of pcdb and its tests (./dev setup installs exactly these, hashes checked:\n"
               "# pip install --require-hashes). An upgrade is a deliberate commit: edit pyproject.toml if needed, then\n"
               "#   ./dev lock        (uv pip compile pyproject.toml --extra test --extra k8s --generate-hashes\n"
               "#                      --python-version 3.11 --python-platform x86_64-unknown-linux-gnu; then\n"
               "#                      scripts/split_lock.py moves prefect-kubernetes and its own closure to\n"
               "#                      requirements-k8s.lock)\n"
               "# and commit this file with what changed and why.\n")
HEADER_APART = ("# prefect-kubernetes and what only it needs, split from the same compile as requirements.lock\n"
                "# (scripts/split_lock.py says why). ./dev setup installs them apart, in .venv/k8s-site, where only\n"
                "# tests/unit/test_k8s.py looks (PYTHONPATH of its child process).\n")


def blocks(text: str) -> list[tuple[str, str]]:
    """(normalised name, the block's text) for each `name==version` entry of uv's output."""
    out, current, name = [], [], None
    for line in text.splitlines(keepends=True):
        if line.startswith("#") and name is None:
            continue                                 # the file's own header
        head = re.match(r"([A-Za-z0-9][A-Za-z0-9_.\-]*)(\[[^\]]*\])?==", line)
        if head:
            if name is not None:
                out.append((name, "".join(current)))
            name, current = head.group(1).lower().replace("_", "-"), [line]
        elif name is not None:
            current.append(line)
    if name is not None:
        out.append((name, "".join(current)))
    return out


def needed_by(block: str) -> set[str]:
    """The packages uv says pull this one in: `# via x` or the `#   x` lines under `# via`."""
    found = set()
    for line in block.splitlines():
        line = line.strip()
        if line.startswith("# via"):
            found.update(line[len("# via"):].split()[:1])
        elif line.startswith("#   "):
            found.add(line[1:].split()[0])
    return {re.sub(r"\[.*", "", n).lower().replace("_", "-") for n in found}


def split(text: str) -> tuple[str, str]:
    entries = blocks(text)
    if APART_ROOT not in {n for n, _ in entries}:
        raise SystemExit(f"split_lock: {APART_ROOT} is not in the compiled lock: compile with --extra k8s")
    apart = {APART_ROOT}
    grew = True
    while grew:
        grew = False
        for name, block in entries:
            via = needed_by(block)
            if name not in apart and via and via <= apart:
                apart.add(name)
                grew = True
    main = "".join(b for n, b in entries if n not in apart)
    other = "".join(b for n, b in entries if n in apart)
    return HEADER_MAIN + main, HEADER_APART + other


if __name__ == "__main__":
    compiled, main_out, apart_out = sys.argv[1:4]
    with open(compiled) as f:
        main_text, apart_text = split(f.read())
    with open(main_out, "w") as f:
        f.write(main_text)
    with open(apart_out, "w") as f:
        f.write(apart_text)
