"""Signing a decision with a person's OpenSSH key (ssh-keygen -Y sign -n pcdb, or the agent).
"""

from __future__ import annotations

from pathlib import Path

from pcdb.config import Environment
from pcdb.errors import PcdbError


def key_file(key: str | None) -> Path:
    if key:
        path = Path(key).expanduser()
        if not path.is_file():
            raise PcdbError(f"--key {key}: no such file")
        return path
    for name in ("id_ed25519", "id_ecdsa", "id_rsa"):
        path = Path.home() / ".ssh" / name
        if path.is_file():
            return path
    raise PcdbError("no signing key: give --key (your OpenSSH private key, or the .pub of a key ssh-agent holds)")


def public_key(key: Path):
    """The public half of ``key``: the file itself (.pub), its .pub beside it, or ssh-keygen -y."""
    import subprocess

    from pcdb.sshsig import PublicKey, SignatureError

    for candidate in ((key,) if key.suffix == ".pub" else (key.with_name(key.name + ".pub"),)):
        if candidate.is_file():
            try:
                return PublicKey.parse(candidate.read_text())
            except SignatureError as exc:
                raise PcdbError(f"{candidate}: {exc}") from None
    result = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, timeout=120,
                            check=False)
    if result.returncode != 0:
        raise PcdbError(f"cannot read the public half of {key}: {result.stderr.strip()}")
    return PublicKey.parse(result.stdout)


def signer_of(spec: Environment, key: Path, claimed: str | None) -> str:
    """Whose key it is, by the spec's decisions.signers (a key nobody's is refused here already)."""
    from pcdb.sshsig import PublicKey

    fingerprint = public_key(key).fingerprint
    owners = [name for name, line in spec.decisions.signers.items() if PublicKey.parse(line).fingerprint == fingerprint]
    if not owners:
        raise PcdbError(f"the key {key} ({fingerprint}) is no one's in {spec.name}'s decisions.signers")
    if claimed and claimed != owners[0]:
        raise PcdbError(f"the key {key} is {owners[0]}'s, not {claimed}'s")
    return owners[0]


def sign(message: str, key: Path) -> str:
    """``ssh-keygen -Y sign -n pcdb`` over ``message`` (the agent signs when ``key`` is a .pub)."""
    import subprocess
    import tempfile

    from pcdb.decisions import NAMESPACE

    with tempfile.TemporaryDirectory(prefix="pcdb-sign-") as folder:
        path = Path(folder) / "message"
        path.write_text(message)
        result = subprocess.run(["ssh-keygen", "-Y", "sign", "-n", NAMESPACE, "-f", str(key), str(path)],
                                capture_output=True, text=True, timeout=300, check=False)
        if result.returncode != 0:
            raise PcdbError(f"ssh-keygen could not sign with {key}: {result.stderr.strip()}")
        return Path(f"{path}.sig").read_text()
