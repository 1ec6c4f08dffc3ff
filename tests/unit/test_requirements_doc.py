"""Every § number and requirement ID the code cites resolves in docs/requirements.md, in the
repository (the client's document and our requirement list are not in it)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pcdb", "flows", "tasks", "cli", "tests", "benchmarks", "docs", "README.md")
NOT_THE_PLAN = {("pcdb/forecast.py", "§5.5")}      # Hyndman & Athanasopoulos, not the client's plan


def cited() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name in SOURCES:
        path = ROOT / name
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.suffix in (".py", ".yaml", ".sql", ".md")]
        for file in files:
            if file.name in ("requirements.md", "test_requirements_doc.py"):
                continue
            text = file.read_text(errors="replace")
            for ref in re.findall(r"§\d+(?:\.\d+)*|R-[A-Z]{3}-\d+|C-\d\b", text):
                if (str(file.relative_to(ROOT)), ref) not in NOT_THE_PLAN:
                    found.setdefault(ref, set()).add(str(file.relative_to(ROOT)))
    return found


def test_every_section_and_requirement_cited_is_explained_in_docs_requirements():
    page = (ROOT / "docs" / "requirements.md").read_text()
    defined = set(re.findall(r"\*\*(R-[A-Z]{3}-\d+|C-\d)\*\*", page))
    sections = set(re.findall(r"^\| (§\d+(?:\.\d+)*)(?: / (§\d+(?:\.\d+)*))?", page, re.M))
    sections = {s for pair in sections for s in pair if s}
    missing = {ref: sorted(files)[:3] for ref, files in cited().items() if ref not in defined | sections}
    assert missing == {}, f"cited but not on docs/requirements.md: {missing}"
    assert len(defined) >= 40 and len(sections) >= 60
