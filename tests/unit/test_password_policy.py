"""The password policy (R-SEC-3, C-5): the installation plan's published example passwords are
refused from any source, in any letter case; a SCRAM verifier recognises its own password."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pcdb import secrets as pw
from pcdb.errors import SecretError
from pcdb.scram import matches, verifier

DOCUMENT = Path(__file__).resolve().parents[3] / "shared" / "spec" / "000_702d91c5e4a1f256.txt"


def published_examples() -> list[str]:
    """The example passwords, read from the client's document at test time (never written here)."""
    text = DOCUMENT.read_text(encoding="utf-8")
    found = set(re.findall(r"(?i)password\s*[:=]?\s*['\"]([^'\"]{6,60})['\"]", text))
    found |= set(re.findall(r"(?i)admin-password\s+['\"]?([^\s'\"]{6,60})", text))
    return sorted(found)


@pytest.mark.skipif(not DOCUMENT.exists(), reason="the client's document is beside the repository (../shared)")
def test_every_example_password_of_the_plan_is_refused_whatever_its_case():
    examples = published_examples()
    assert len(examples) == len(pw.PUBLISHED_EXAMPLES) == 4
    for example in examples:
        for variant in (example, example.upper(), example.lower()):
            with pytest.raises(SecretError, match="example passwords printed in the installation plan") as err:
                pw.check_policy("environment variable PCDB_APP_PASSWORD", variant)
            assert variant not in str(err.value)


def test_a_strong_password_of_ones_own_passes_and_a_weak_one_is_told_what_it_lacks():
    pw.check_policy("a generated password file", pw.generate_password())
    with pytest.raises(SecretError, match="at least 12 characters, an upper-case letter"):
        pw.check_policy("environment variable X", "short1!")


def test_a_verifier_matches_only_its_own_password():
    stored = verifier("Correct-Horse-42!")
    assert matches(stored, "Correct-Horse-42!")
    assert not matches(stored, "Correct-Horse-43!") and not matches("md5abc", "Correct-Horse-42!")
