"""Ed25519 command signatures: canonical bytes, the keyring's file rules, private keys."""

from __future__ import annotations

import base64
import json
import os
import traceback
from pathlib import Path

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from station.cloud.signing import (
    BadSignature,
    KeyFileError,
    Keyring,
    UnknownKey,
    canonical,
    load_private_key,
    private_pem,
    public_pem,
    sign_command,
)

COMMAND = {"command": "snapshot", "args": {}, "request_id": "r-1", "station_id": "S1",
           "issued_at": "2026-11-30T12:00:00.000Z", "expires_at": "2026-11-30T12:01:00.000Z"}


def _keydir(tmp_path: Path, **keys: Ed25519PrivateKey) -> Path:
    d = tmp_path / "trusted"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    for key_id, key in keys.items():
        p = d / f"{key_id}.pub"
        p.write_bytes(public_pem(key.public_key()))
        p.chmod(0o644)
    return d


def test_canonical_is_rfc8785_without_signature() -> None:
    obj = {"b": 1, "a": [1.0, "é"], "signature": "xx"}
    assert canonical(obj) == b'{"a":[1,"\xc3\xa9"],"b":1}'
    assert canonical(obj) == rfc8785.dumps({"a": [1.0, "é"], "b": 1})


def test_sign_then_verify_whatever_the_key_order_and_spacing() -> None:
    key = Ed25519PrivateKey.generate()
    signed = sign_command(COMMAND, "k1", key)
    assert signed["key_id"] == "k1"
    assert len(base64.b64decode(signed["signature"], validate=True)) == 64
    # what the station receives was serialised by someone else's JSON library
    received = json.loads(json.dumps(dict(reversed(list(signed.items()))), indent=3))
    assert Keyring({"k1": key.public_key()}).verify(received) == "k1"


def test_every_field_is_covered_by_the_signature() -> None:
    key = Ed25519PrivateKey.generate()
    ring = Keyring({"k1": key.public_key()})
    signed = sign_command(COMMAND, "k1", key)
    for field, value in [("command", "request_stop"), ("args", {"reason": "x"}),
                         ("request_id", "r-2"), ("station_id", "S2"),
                         ("issued_at", "2026-11-30T12:00:00.001Z"),
                         ("expires_at", "2026-12-30T12:00:00.000Z")]:
        with pytest.raises(BadSignature, match="does not verify"):
            ring.verify({**signed, field: value})
    with pytest.raises(BadSignature):  # an extra field is signed too
        ring.verify({**signed, "extra": 1})


def test_unknown_key_and_bad_signatures() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    ring = Keyring({"k1": key.public_key()})
    with pytest.raises(UnknownKey):
        ring.verify(sign_command(COMMAND, "k2", key))
    with pytest.raises(BadSignature, match="does not verify"):  # key id rotation: not by id
        ring.verify(sign_command(COMMAND, "k1", other))
    signed = sign_command(COMMAND, "k1", key)
    with pytest.raises(BadSignature, match="not base64"):
        ring.verify({**signed, "signature": "not base64!"})
    with pytest.raises(BadSignature, match="not base64"):
        ring.verify({**signed, "signature": "ü" * 88})
    with pytest.raises(BadSignature, match="32 bytes"):
        ring.verify({**signed, "signature": base64.b64encode(b"x" * 32).decode()})
    with pytest.raises(BadSignature, match="no signature"):
        ring.verify({k: v for k, v in signed.items() if k != "signature"})
    with pytest.raises(BadSignature, match="canonical"):  # JCS cannot carry 2**60
        ring.verify({**signed, "args": {"n": 2**60}})


def test_keyring_loads_pub_files_by_key_id(tmp_path: Path) -> None:
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    d = _keydir(tmp_path, **{"ops-2026.1": a, "ops_2027-1": b})
    (d / "README").write_text("not a key: ignored")
    ring = Keyring.load(d)
    assert ring.key_ids == ["ops-2026.1", "ops_2027-1"]
    assert ring.verify(sign_command(COMMAND, "ops_2027-1", b)) == "ops_2027-1"
    assert "ops-2026.1" in repr(ring) and "BEGIN" not in repr(ring)


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777])
def test_keyring_refuses_a_directory_others_may_write(tmp_path: Path, mode: int) -> None:
    d = _keydir(tmp_path, k1=Ed25519PrivateKey.generate())
    d.chmod(mode)
    with pytest.raises(KeyFileError, match=rf"{d}: mode 0{mode:o}: .*writable by group or"):
        Keyring.load(d)


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_keyring_refuses_a_key_file_others_may_write(tmp_path: Path, mode: int) -> None:
    d = _keydir(tmp_path, k1=Ed25519PrivateKey.generate())
    (d / "k1.pub").chmod(mode)
    with pytest.raises(KeyFileError, match=rf"{d / 'k1.pub'}: mode 0{mode:o}"):
        Keyring.load(d)


def test_keyring_refuses_what_is_not_a_regular_file_or_directory(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    d = _keydir(tmp_path, k1=key)
    with pytest.raises(KeyFileError, match="not a directory"):
        Keyring.load(d / "k1.pub")
    with pytest.raises(KeyFileError, match="No such file"):
        Keyring.load(tmp_path / "absent")
    elsewhere = tmp_path / "elsewhere.pem"
    elsewhere.write_bytes(public_pem(key.public_key()))
    os.symlink(elsewhere, d / "k2.pub")
    with pytest.raises(KeyFileError, match=rf"{d / 'k2.pub'}: .*symlink"):
        Keyring.load(d)
    (d / "k2.pub").unlink()
    (d / "k3.pub").mkdir(mode=0o755)
    with pytest.raises(KeyFileError, match=rf"{d / 'k3.pub'}: not a regular file"):
        Keyring.load(d)
    (d / "k3.pub").rmdir()
    os.mkfifo(d / "k4.pub", 0o644)
    with pytest.raises(KeyFileError, match=rf"{d / 'k4.pub'}: not a regular file"):
        Keyring.load(d)


def test_keyring_refuses_bad_key_ids_and_bad_keys(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    d = _keydir(tmp_path, k1=key)
    bad = d / "bad id.pub"
    bad.write_bytes(public_pem(key.public_key()))
    with pytest.raises(KeyFileError, match="is not a key id"):
        Keyring.load(d)
    bad.unlink()
    (d / "k2.pub").write_bytes(private_pem(key))  # a private key where a public one goes
    with pytest.raises(KeyFileError, match=r"k2.pub: not a PEM SubjectPublicKeyInfo Ed25519"):
        Keyring.load(d)
    (d / "k2.pub").write_bytes(b"-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n")
    with pytest.raises(KeyFileError, match="not a PEM SubjectPublicKeyInfo Ed25519"):
        Keyring.load(d)


def test_private_key_readable_by_others_is_refused_naming_path_and_mode(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    p = tmp_path / "ops.key"
    p.write_bytes(private_pem(key))
    p.chmod(0o644)
    with pytest.raises(KeyFileError) as info:
        load_private_key(p)
    assert str(info.value) == (f"{p}: mode 0644: a private key must not be readable by "
                               "others (chmod 600)")
    p.chmod(0o640)
    with pytest.raises(KeyFileError, match="mode 0640"):
        load_private_key(p)
    p.chmod(0o600)
    loaded = load_private_key(p)
    assert loaded.public_key().public_bytes_raw() == key.public_key().public_bytes_raw()


def test_secrets_never_appear_in_errors_or_tracebacks(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = private_pem(key).decode()
    body = "".join(pem.splitlines()[1:-1])
    p = tmp_path / "ops.key"
    p.write_text(pem)
    p.chmod(0o644)
    with pytest.raises(KeyFileError) as refused:
        load_private_key(p)
    # a damaged key: the parser's own message must not come along either
    damaged = tmp_path / "damaged.key"
    damaged.write_text(pem.replace(body[10:20], "A" * 10))
    damaged.chmod(0o600)
    with pytest.raises(KeyFileError) as unreadable:
        load_private_key(damaged)
    assert "not an unencrypted PEM PKCS8 Ed25519 private key" in str(unreadable.value)
    for info in (refused, unreadable):
        text = "".join(traceback.format_exception(info.value))
        assert body[:16] not in text and body[-16:] not in text
        assert info.value.__cause__ is None
        assert info.value.__context__ is None or info.value.__suppress_context__
    assert body[:16] not in repr(load_private_key(_chmod(p, 0o600)))


def _chmod(p: Path, mode: int) -> Path:
    p.chmod(mode)
    return p


def test_sign_command_refuses_a_bad_key_id() -> None:
    with pytest.raises(ValueError, match="key id"):
        sign_command(COMMAND, "a/b", Ed25519PrivateKey.generate())
