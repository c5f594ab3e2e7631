"""Ed25519 keys: making them, reading them from PEM files and config, and signing JWS with them.

A key the site trusts is written in the config as the base64url of its 32 raw bytes (a JWK's `x`), short enough to
paste; a private key lives in a PEM file (PKCS#8) that only its holder can read. One algorithm only (RFC 9864's
fully specified `Ed25519`, accepted also under its older name `EdDSA`): a verifier that accepts a list of algorithms
is the classic JWS hole (alg=none, HMAC keyed with a public key), so there is no list to choose from.

cryptography and joserfc (~8 MB of RSS) are imported inside the functions that use them: every agent imports this
module, but only one that signs or checks signatures needs them (tests/deploy/test_imports.py).
"""

from __future__ import annotations

import base64
import os
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    from joserfc.jwk import OKPKey

ALGORITHM = "Ed25519"
# the name JOSE libraries used before RFC 9864 for the same signature over the same key type
ACCEPTED_ALGORITHMS = (ALGORITHM, "EdDSA")


class KeyFileError(ValueError):
    """A key file or key text that cannot be used; the message names it."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


KEY_OPTIONS = ("--public-key",)  # command-line options whose value is a key's base64url text


def key_arguments(argv: list[str]) -> list[str]:
    """`argv` with each key option's value attached (`--public-key=-h6b…`). A base64url key starts with '-' once in
    64, and argparse reads `--public-key -h6b…` as two options ("expected one argument"); attached, it is the value."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in KEY_OPTIONS:
            value = next(args, None)
            out.append(arg if value is None else f"{arg}={value}")
        else:
            out.append(arg)
    return out


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The config form of a public key: base64url of its 32 raw bytes."""
    from cryptography.hazmat.primitives import serialization  # deferred (module docstring)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return b64url(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def jwk_public(text: str) -> OKPKey:
    """The JWK of a public key given in config form."""
    from joserfc.jwk import OKPKey  # deferred (module docstring)

    raw = b64url_decode(text)
    if len(raw) != 32:
        raise KeyFileError(f"an Ed25519 public key is 32 bytes, this one is {len(raw)}")
    return OKPKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": text})


def new_private_key() -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # deferred (module docstring)

    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization  # deferred (module docstring)

    pem, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return key.private_bytes(pem, pkcs8, serialization.NoEncryption())


def write_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Write a new private key readable by its owner only; never overwrites an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private_key_pem(key))


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file; KeyFileError naming the file otherwise."""
    from cryptography.hazmat.primitives import serialization  # deferred (module docstring)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: a {type(key).__name__.removeprefix('_')}, not an Ed25519 key")
    return key


@dataclass(frozen=True)
class Signer:
    """A private key and the id that names it in the JWS header."""

    kid: str
    key: Ed25519PrivateKey

    @classmethod
    def from_file(cls, kid: str, path: str | Path) -> Signer:
        return cls(kid, load_private_key(path))

    @property
    def public_key(self) -> str:
        return public_key_text(self.key)

    @cached_property
    def _jwk(self) -> OKPKey:
        from joserfc.jwk import OKPKey  # deferred (module docstring)

        return OKPKey.import_key(private_key_pem(self.key))

    def sign(self, payload: bytes, typ: str) -> str:
        """A JWS compact serialization of `payload` (the exact bytes are what is signed: no canonical form needed)."""
        from joserfc import jws  # deferred (module docstring)

        header = {"alg": ALGORITHM, "kid": self.kid, "typ": typ}
        return jws.serialize_compact(header, payload, self._jwk, algorithms=[ALGORITHM])


def verify_compact(token: str, public: OKPKey) -> bytes:
    """The payload of `token` if `public` signed it; joserfc's errors otherwise. joserfc warns about the older
    `EdDSA` name; with the key type fixed to Ed25519 the name is unambiguous, so the warning is not ours to show."""
    from joserfc import jws  # deferred (module docstring)
    from joserfc.errors import SecurityWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        return jws.deserialize_compact(token, public, algorithms=list(ACCEPTED_ALGORITHMS)).payload
