"""OpenSSH signatures (``ssh-keygen -Y sign``) checked in Python, with the ``cryptography`` package.

The format is OpenSSH's PROTOCOL.sshsig: an armored blob holding the magic ``SSHSIG``, a version,
the signer's public key, a namespace, a hash algorithm and the signature over

    "SSHSIG" || string(namespace) || string(reserved) || string(hash_algorithm) || string(H(message))

Keys: ssh-ed25519, ecdsa-sha2-nistp256/384/521 and RSA (rsa-sha2-256/512). Hardware keys (sk-*)
are refused with a clear message. ``ssh-keygen -Y verify`` is the reference the tests compare
with; this module exists so that a ledger of 100,000 signed rows is re-verified in seconds, not
in 100,000 processes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from pcdb.errors import PcdbError

MAGIC = b"SSHSIG"
ARMOR_BEGIN = "-----BEGIN SSH SIGNATURE-----"
ARMOR_END = "-----END SSH SIGNATURE-----"
_HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
_CURVES = {"nistp256": (ec.SECP256R1(), hashes.SHA256()), "nistp384": (ec.SECP384R1(), hashes.SHA384()),
           "nistp521": (ec.SECP521R1(), hashes.SHA512())}


class SignatureError(PcdbError):
    """A signature or a public key that cannot be read, or that does not verify."""


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def string(self) -> bytes:
        if self.at + 4 > len(self.data):
            raise SignatureError("truncated")
        (length,) = struct.unpack(">I", self.data[self.at:self.at + 4])
        start, self.at = self.at + 4, self.at + 4 + length
        if self.at > len(self.data):
            raise SignatureError("truncated")
        return self.data[start:self.at]

    def uint32(self) -> int:
        if self.at + 4 > len(self.data):
            raise SignatureError("truncated")
        (value,) = struct.unpack(">I", self.data[self.at:self.at + 4])
        self.at += 4
        return value

    def mpint(self) -> int:
        return int.from_bytes(self.string(), "big", signed=True)

    def done(self) -> bool:
        return self.at == len(self.data)


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


@dataclass(frozen=True)
class PublicKey:
    """An OpenSSH public key: its type, its wire blob, and the key itself."""

    kind: str
    blob: bytes

    @property
    def fingerprint(self) -> str:
        """As ``ssh-keygen -l`` prints it: SHA256:<base64, unpadded>."""
        return "SHA256:" + base64.b64encode(hashlib.sha256(self.blob).digest()).decode().rstrip("=")

    @property
    def line(self) -> str:
        return f"{self.kind} {base64.b64encode(self.blob).decode()}"

    @classmethod
    def parse(cls, line: str) -> PublicKey:
        """``ssh-ed25519 AAAA... comment`` (an authorized_keys line without options).

        Raises:
            SignatureError: not an OpenSSH public key of a supported type.
        """
        parts = line.strip().split()
        if len(parts) < 2:
            raise SignatureError("not an OpenSSH public key: expected '<type> <base64> [comment]'")
        try:
            blob = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("not an OpenSSH public key: its key is not base64") from None
        key = cls.from_blob(blob)
        if key.kind != parts[0]:
            raise SignatureError(f"not an OpenSSH public key: it says {parts[0]} but holds a {key.kind} key")
        return key

    @classmethod
    def from_blob(cls, blob: bytes) -> PublicKey:
        kind = _Reader(blob).string().decode(errors="replace")
        key = cls(kind, blob)
        key._crypto()   # a key that cannot be read is refused now, not at verification
        return key

    def _crypto(self):
        reader = _Reader(self.blob)
        reader.string()
        if self.kind == "ssh-ed25519":
            raw = reader.string()
            if len(raw) != 32 or not reader.done():
                raise SignatureError("a malformed ssh-ed25519 key")
            return Ed25519PublicKey.from_public_bytes(raw)
        if self.kind.startswith("ecdsa-sha2-"):
            curve = reader.string().decode()
            point = reader.string()
            if curve not in _CURVES or self.kind != f"ecdsa-sha2-{curve}" or not reader.done():
                raise SignatureError(f"an unsupported or malformed {self.kind} key")
            return ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[curve][0], point)
        if self.kind == "ssh-rsa":
            e, n = reader.mpint(), reader.mpint()
            if not reader.done() or n.bit_length() < 2048:
                raise SignatureError("an RSA key shorter than 2048 bits, or malformed")
            return rsa.RSAPublicNumbers(e, n).public_key()
        if self.kind.startswith("sk-"):
            raise SignatureError(f"{self.kind} (a hardware key) is not supported: sign with an ed25519, ECDSA or RSA "
                                 "key (the agent may hold it)")
        raise SignatureError(f"{self.kind} keys are not supported (ed25519, ECDSA, RSA)")


@dataclass(frozen=True)
class Signature:
    """A parsed SSHSIG: who signed (the key), in which namespace, with which hash."""

    key: PublicKey
    namespace: str
    hash_algorithm: str
    reserved: bytes
    kind: str
    value: bytes

    @classmethod
    def parse(cls, armored: str) -> Signature:
        """Read an armored signature as ``ssh-keygen -Y sign`` writes it.

        Raises:
            SignatureError: not an SSH signature.
        """
        text = armored.strip()
        if not (text.startswith(ARMOR_BEGIN) and text.endswith(ARMOR_END)):
            raise SignatureError("not an SSH signature: it must start with -----BEGIN SSH SIGNATURE-----")
        try:
            blob = base64.b64decode("".join(text[len(ARMOR_BEGIN):-len(ARMOR_END)].split()), validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("not an SSH signature: its body is not base64") from None
        if not blob.startswith(MAGIC):
            raise SignatureError("not an SSH signature: no SSHSIG magic")
        reader = _Reader(blob[len(MAGIC):])
        if reader.uint32() != 1:
            raise SignatureError("an SSH signature of an unknown version")
        key = PublicKey.from_blob(reader.string())
        namespace = reader.string().decode(errors="replace")
        reserved = reader.string()
        hash_algorithm = reader.string().decode(errors="replace")
        inner = _Reader(reader.string())
        if not reader.done():
            raise SignatureError("an SSH signature with trailing data")
        kind, value = inner.string().decode(errors="replace"), inner.string()
        if hash_algorithm not in _HASHES:
            raise SignatureError(f"an SSH signature with hash {hash_algorithm!r} (sha256 or sha512)")
        return cls(key, namespace, hash_algorithm, reserved, kind, value)

    def verifies(self, message: bytes, namespace: str) -> bool:
        """The signature is over ``message`` in ``namespace``, by its key."""
        if self.namespace != namespace:
            return False
        digest = _HASHES[self.hash_algorithm](message).digest()
        signed = MAGIC + _string(namespace.encode()) + _string(self.reserved) + \
            _string(self.hash_algorithm.encode()) + _string(digest)
        crypto = self.key._crypto()
        try:
            if self.key.kind == "ssh-ed25519" and self.kind == "ssh-ed25519":
                crypto.verify(self.value, signed)
            elif self.key.kind.startswith("ecdsa-sha2-") and self.kind == self.key.kind:
                reader = _Reader(self.value)
                r, s = reader.mpint(), reader.mpint()
                crypto.verify(encode_dss_signature(r, s), signed, ec.ECDSA(_CURVES[self.kind.rsplit("-", 1)[1]][1]))
            elif self.key.kind == "ssh-rsa" and self.kind in ("rsa-sha2-256", "rsa-sha2-512"):
                algorithm = hashes.SHA256() if self.kind == "rsa-sha2-256" else hashes.SHA512()
                crypto.verify(self.value, signed, padding.PKCS1v15(), algorithm)
            else:
                return False
        except (InvalidSignature, SignatureError, ValueError):
            return False
        return True
