"""Ed25519 signatures on cloud commands, and the keys that make them.

A command is signed over its RFC 8785 (JCS) canonical form without "signature": the
back end and the station serialise the same object to the same bytes whatever their JSON
library's key order or number formatting. The station trusts the public keys in one
directory (`[cloud] trusted_keys_dir`), one file per key id, so keys rotate by id: add the
new key's file, let the back end sign with it, remove the old file.

Secrets never leave this module in words: no exception, repr or log line carries key
material (a private key's errors name its path and mode only, and are raised `from None`
so a traceback does not chain the parser's own message).
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
PUB_SUFFIX = ".pub"
KEY_SUFFIX = ".key"
SIGNATURE_BYTES = 64
MAX_KEY_FILE_BYTES = 16 * 1024  # a PEM Ed25519 key is ~120 bytes


class SigningError(Exception):
    """Base of this module's errors."""


class KeyFileError(SigningError):
    """A key file or directory that must not be used: its path and why (never its bytes)."""


class UnknownKey(SigningError):
    """The command names a key id the station does not trust."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"unknown key id {key_id[:64]!r}")
        self.key_id = key_id


class BadSignature(SigningError):
    """The signature is missing, not base64, the wrong length, or does not verify."""


def canonical(obj: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: RFC 8785 of the object without "signature".

    Raises rfc8785.CanonicalizationError for what JCS cannot carry (an integer beyond
    +-(2**53-1), NaN, a lone surrogate)."""
    return rfc8785.dumps({k: v for k, v in obj.items() if k != "signature"})


def sign_command(obj: Mapping[str, Any], key_id: str,
                 private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """A copy of obj with key_id set and signature = base64 of Ed25519(canonical bytes)."""
    if not KEY_ID.fullmatch(key_id):
        raise ValueError("key id must be 1-64 characters of A-Z a-z 0-9 . _ -")
    out = {k: v for k, v in obj.items() if k != "signature"}
    out["key_id"] = key_id
    out["signature"] = base64.b64encode(private_key.sign(canonical(out))).decode("ascii")
    return out


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _read_key_file(path: Path) -> tuple[bytes, os.stat_result]:
    """Read a key file without following a symlink, judged by the file actually opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot open: {exc.strerror or 'error'}"
                           + (" (a symlink is not accepted)" if exc.errno == errno.ELOOP else "")
                           ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path}: not a regular file")
        if st.st_size > MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"{path}: {st.st_size} bytes is too large for a key file")
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    return data, st


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM PKCS8 file that only its owner may read."""
    p = Path(path)
    data, st = _read_key_file(p)
    if st.st_mode & 0o077:
        raise KeyFileError(f"{p}: mode {_mode(st)}: a private key must not be readable by "
                           "others (chmod 600)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        key = None
    del data
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{p}: not an unencrypted PEM PKCS8 Ed25519 private key") from None
    return key


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Keyring:
    """The public keys the station trusts, by key id."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        for key_id in keys:
            if not KEY_ID.fullmatch(key_id):
                raise ValueError(f"bad key id {key_id[:64]!r}")
        self._keys = dict(keys)

    def __repr__(self) -> str:
        return f"Keyring(key_ids={sorted(self._keys)})"

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Keyring:
        """Every <key_id>.pub (PEM SubjectPublicKeyInfo, Ed25519) in directory. Refused,
        naming the path: a directory or key file that group or others may write (anyone
        who can add a key can command the station), or that is not a directory / regular
        file, or a .pub that is not an Ed25519 public key or not named by a valid key id."""
        d = Path(directory)
        try:
            st = os.lstat(d)
        except OSError as exc:
            raise KeyFileError(f"{d}: {exc.strerror or 'cannot read'}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise KeyFileError(f"{d}: not a directory")
        if st.st_mode & 0o022:
            raise KeyFileError(f"{d}: mode {_mode(st)}: a trusted keys directory must not be "
                               "writable by group or others (chmod 755)")
        keys: dict[str, Ed25519PublicKey] = {}
        try:
            names = sorted(os.listdir(d))
        except OSError as exc:
            raise KeyFileError(f"{d}: {exc.strerror or 'cannot list'}") from None
        for name in names:
            if not name.endswith(PUB_SUFFIX):
                continue
            path = d / name
            key_id = name[:-len(PUB_SUFFIX)]
            if not KEY_ID.fullmatch(key_id):
                raise KeyFileError(f"{path}: {key_id[:64]!r} is not a key id (1-64 characters "
                                   "of A-Z a-z 0-9 . _ -)")
            data, fst = _read_key_file(path)
            if fst.st_mode & 0o022:
                raise KeyFileError(f"{path}: mode {_mode(fst)}: a trusted key must not be "
                                   "writable by group or others (chmod 644)")
            try:
                key = serialization.load_pem_public_key(data)
            except (ValueError, TypeError):
                key = None
            if not isinstance(key, Ed25519PublicKey):
                raise KeyFileError(f"{path}: not a PEM SubjectPublicKeyInfo Ed25519 public key")
            keys[key_id] = key
        return cls(keys)

    def verify(self, obj: Mapping[str, Any]) -> str:
        """The key id that signed obj; UnknownKey or BadSignature otherwise."""
        key_id = obj.get("key_id")
        if not isinstance(key_id, str) or key_id not in self._keys:
            raise UnknownKey(str(key_id))
        sig_text = obj.get("signature")
        if not isinstance(sig_text, str):
            raise BadSignature("no signature")
        try:
            sig = base64.b64decode(sig_text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise BadSignature("signature is not base64") from None
        if len(sig) != SIGNATURE_BYTES:
            raise BadSignature(f"signature is {len(sig)} bytes, not {SIGNATURE_BYTES}")
        try:
            data = canonical(obj)
        except (rfc8785.CanonicalizationError, RecursionError):
            raise BadSignature("the command has no canonical form (RFC 8785)") from None
        try:
            self._keys[key_id].verify(sig, data)
        except InvalidSignature:
            raise BadSignature(f"signature does not verify with key {key_id!r}") from None
        return key_id
