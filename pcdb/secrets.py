"""Secret sources, the password policy of R-SEC-3, and generated sandbox passwords.

A spec never holds a secret; it names where one comes from. Environment variables and
generated files are read here; Prefect Secret blocks are read by the tasks layer, which passes
a loader in (this package does not import Prefect).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import string
from collections.abc import Callable
from pathlib import Path

from pcdb.errors import SecretError

# SHA-256 of the example passwords printed in the installation plan (§4.1.1, §7.1.2, §7.3.2),
# lower-cased: published, so never acceptable (C-5). Only their hashes are here, never the text.
PUBLISHED_EXAMPLES = frozenset({
    "29436cf67ebdaa50e4ede4eb375565f27a93c008fe2073b0b4f493673ad3ec90",
    "50ad92374fb57041305fa81838370aae427814b9913cd105600b1e8a7df22dcc",
    "8deae8aba42b3d39fec1e8cb3e40c631c676f0ea7a279e5df1ad9f3250f3c964",
    "c77827a9d6db1c483e5014f7b9860dd08b1052a086ba9f8c8743ca269b7656d1",
})

SPECIALS = "!#%+-.=^_~"  # safe in libpq conninfo strings and shell-free
_ALPHABET = string.ascii_letters + string.digits + SPECIALS


def policy_violations(password: str, min_length: int = 12) -> list[str]:
    """Return what ``password`` lacks under the policy of §4.3.2 (empty when it passes)."""
    missing = []
    if len(password) < min_length:
        missing.append(f"at least {min_length} characters")
    if not any(c.isupper() for c in password):
        missing.append("an upper-case letter")
    if not any(c.islower() for c in password):
        missing.append("a lower-case letter")
    if not any(c.isdigit() for c in password):
        missing.append("a digit")
    if not any(not c.isalnum() for c in password):
        missing.append("a special character")
    return missing


def is_published_example(password: str) -> bool:
    """The password is one the installation plan printed as an example (any letter case)."""
    return hashlib.sha256(password.lower().encode()).hexdigest() in PUBLISHED_EXAMPLES


def check_policy(label: str, password: str, min_length: int = 12) -> None:
    """Raise SecretError naming ``label`` (never the password) when it breaks the policy or is
    one of the installation plan's published examples, whatever its source."""
    if is_published_example(password):
        raise SecretError(f"the password from {label} is one of the example passwords printed in the installation "
                          "plan (C-5): it is public. Set a new one at its source")
    missing = policy_violations(password, min_length)
    if missing:
        raise SecretError(
            f"the password from {label} is too weak: it needs {', '.join(missing)} "
            "(policy R-SEC-3); set a stronger one at its source"
        )


def generate_password(length: int = 24) -> str:
    """Return a random password that always satisfies the policy."""
    while True:
        candidate = "".join(secrets.choice(_ALPHABET) for _ in range(length))
        if not policy_violations(candidate):
            return candidate


def read_or_create(path: Path, length: int = 24) -> str:
    """Return the password kept in ``path``, creating it (mode 0600, parent 0700) if absent."""
    if path.exists():
        mode = path.stat().st_mode & 0o077
        if mode:
            raise SecretError(f"{path} is readable by others (mode {oct(path.stat().st_mode & 0o777)}); "
                              f"run: chmod 600 {path}")
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    password = generate_password(length)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    return password


def from_env(variable: str) -> str:
    """Return the value of an environment variable, or raise SecretError saying how to set it."""
    value = os.environ.get(variable)
    if not value:
        raise SecretError(f"the secret environment variable {variable} is not set; "
                          f"export {variable}=... (never write the value into a spec)")
    return value


def from_file(path: str | Path) -> str:
    """The secret kept in ``path``, which only its owner may read.

    Raises:
        SecretError: the file is missing, unreadable, or readable by others (naming the fix).
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise SecretError(f"{path} holds a secret and is readable by others (mode {mode:04o}); run: chmod 600 {path}")
        value = path.read_text().strip()
    except FileNotFoundError:
        raise SecretError(f"the secret file {path} does not exist; create it (mode 0600) or name another source") from None
    except PermissionError:
        raise SecretError(f"the secret file {path} cannot be read by this user; run pcdb as its owner") from None
    if not value:
        raise SecretError(f"the secret file {path} is empty")
    return value


def read_or_create_value(path: Path, make: Callable[[], str]) -> str:
    """The value kept in ``path`` (0600, folder 0700), made with ``make()`` the first time."""
    if path.exists():
        return from_file(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


SecretLoader = Callable[[str], str]
KeyVaultReader = Callable[[str, str], str]   # (vault, secret name) -> value
