"""OPC UA security (drivers/plc/opcua_security.py): swapd's certificate, the trust list,
the secret files, and `swapd certs`. Real cryptography throughout."""

from __future__ import annotations

import ipaddress
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from structlog.testing import capture_logs

from drivers.plc.opcua_security import (
    CertificateRejectedError,
    OpcUaSecurityError,
    TrustList,
    certificate_uri,
    check_private_key_file,
    create_application_certificate,
    expires_at,
    load_own_identity,
    read_password,
    thumbprint,
)
from station import cli

PLC_URI = "urn:swapstation:sim-plc"
SERVER = ua.ApplicationDescription(ApplicationUri=PLC_URI,
                                   ApplicationType=ua.ApplicationType.Server)
S = ua.StatusCodes


def make(tmp: Path, name: str, **kw: object) -> x509.Certificate:
    kw.setdefault("application_uri", PLC_URI)
    return create_application_certificate(tmp / f"{name}.der", tmp / f"{name}.pem",
                                          **kw)  # type: ignore[arg-type]


def make_ca(cn: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def issue(ca: x509.Certificate, ca_key: rsa.RSAPrivateKey, uri: str = PLC_URI
          ) -> x509.Certificate:
    """A PLC's application certificate issued by a CA (serverAuth only, as PLCs have)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "PLC 1")]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True,
                                         key_encipherment=True, data_encipherment=True,
                                         key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))


def write_der(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return path


@pytest.fixture
def trust_list(tmp_path: Path) -> TrustList:
    tl = TrustList(tmp_path / "pki", peer="server")
    tl.ensure_dirs()
    return tl


# ------------------------------------------------------------------ the certificate


def test_created_certificate_is_an_opc_ua_application_certificate(tmp_path: Path) -> None:
    before = datetime.now(UTC)
    cert = create_application_certificate(
        tmp_path / "own" / "certs" / "swapd.der", tmp_path / "own" / "private" / "swapd.pem",
        application_uri="urn:swapstation:swapd", hostnames=["station-7", "localhost"],
        ip_addresses=["10.0.0.7"], days=30)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert isinstance(next(iter(san)), x509.UniformResourceIdentifier)  # the URI first
    assert certificate_uri(cert) == "urn:swapstation:swapd"
    assert san.get_values_for_type(x509.DNSName) == ["station-7", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (ku.digital_signature and ku.content_commitment and ku.key_encipherment
            and ku.data_encipherment and ku.key_cert_sign)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest  # self-signed: its own issuer
    assert cert.subject == cert.issuer
    assert cert.not_valid_before_utc <= before <= cert.not_valid_after_utc
    assert abs(expires_at(cert) - (before + timedelta(days=30))) < timedelta(minutes=1)

    key_path = tmp_path / "own" / "private" / "swapd.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path.parent.stat().st_mode) & 0o077 == 0
    assert b"BEGIN PRIVATE KEY" in key_path.read_bytes()  # PKCS#8, unencrypted
    on_disk = x509.load_der_x509_certificate(
        (tmp_path / "own" / "certs" / "swapd.der").read_bytes())
    assert on_disk == cert
    assert load_own_identity(tmp_path / "own" / "certs" / "swapd.der", key_path)[0] == cert


@pytest.mark.parametrize("role", [CertificateValidatorOptions.PEER_SERVER,
                                  CertificateValidatorOptions.PEER_CLIENT])
async def test_created_certificate_passes_asyncuas_validator(
        tmp_path: Path, role: CertificateValidatorOptions) -> None:
    cert = make(tmp_path, "plc")
    (tmp_path / "trusted").mkdir()
    write_der(tmp_path / "trusted" / "plc.der", cert)
    store = TrustStore([tmp_path / "trusted"], [])
    await store.load()
    app_type = (ua.ApplicationType.Server if role == CertificateValidatorOptions.PEER_SERVER
                else ua.ApplicationType.Client)
    app = ua.ApplicationDescription(ApplicationUri=PLC_URI, ApplicationType=app_type)
    await CertificateValidator(CertificateValidatorOptions.TRUSTED_VALIDATION | role,
                               store).validate(cert, app)


def test_refuses_to_overwrite_unless_told(tmp_path: Path) -> None:
    make(tmp_path, "swapd")
    key_before = (tmp_path / "swapd.pem").read_bytes()
    with pytest.raises(FileExistsError, match=r"swapd\.pem exists: refusing to overwrite"):
        make(tmp_path, "swapd")
    assert (tmp_path / "swapd.pem").read_bytes() == key_before
    os.chmod(tmp_path / "swapd.pem", 0o644)  # a replaced key does not inherit the old mode
    cert = make(tmp_path, "swapd", overwrite=True)
    assert (tmp_path / "swapd.pem").read_bytes() != key_before
    assert stat.S_IMODE((tmp_path / "swapd.pem").stat().st_mode) == 0o600
    assert load_own_identity(tmp_path / "swapd.der", tmp_path / "swapd.pem")[0] == cert
    assert sorted(p.name for p in tmp_path.iterdir()) == ["swapd.der", "swapd.pem"]


# ------------------------------------------------------------------ the trust list


async def test_trusted_passes_unknown_is_rejected_once_then_trusted(
        tmp_path: Path, trust_list: TrustList) -> None:
    plc = make(tmp_path, "plc", common_name="sim-plc")
    with pytest.raises(ServiceError) as err:
        await trust_list.validate(plc, SERVER)
    assert err.value.code == S.BadCertificateUntrusted
    rejected = list(trust_list.rejected_dir.iterdir())
    assert [p.name for p in rejected] == [f"sim-plc [{thumbprint(plc)}].der"]
    assert x509.load_der_x509_certificate(rejected[0].read_bytes()) == plc
    message = trust_list.last_rejection
    assert message is not None
    assert str(err.value) == message
    assert f"server certificate CN=sim-plc (sha1 {thumbprint(plc)}) is not trusted" in message
    assert str(rejected[0]) in message and str(trust_list.trusted_dir) in message

    with pytest.raises(ServiceError):  # again: still one file
        await trust_list.validate(plc, SERVER)
    assert len(list(trust_list.rejected_dir.iterdir())) == 1

    dest = trust_list.trust(rejected[0])
    assert dest.parent == trust_list.trusted_dir
    await trust_list.validate(plc, SERVER)
    assert trust_list.last_rejection is None
    listed = trust_list.list()
    assert [i.thumbprint for i in listed["trusted"]] == [thumbprint(plc)]
    assert listed["trusted"][0].uri == PLC_URI
    assert [i.path for i in listed["rejected"]] == rejected


async def test_another_trusted_certificate_does_not_trust_this_one(
        tmp_path: Path, trust_list: TrustList) -> None:
    trust_list.trust(write_der(tmp_path / "a.der", make(tmp_path, "other")))
    with pytest.raises(CertificateRejectedError) as err:
        await trust_list.validate(make(tmp_path, "plc"), SERVER)
    assert err.value.code == S.BadCertificateUntrusted


@pytest.mark.parametrize("window", ["expired", "not yet valid"])
async def test_certificate_outside_its_validity_is_refused_even_if_trusted(
        tmp_path: Path, trust_list: TrustList, window: str) -> None:
    now = datetime.now(UTC)
    if window == "expired":
        cert = make(tmp_path, "plc", not_before=now - timedelta(days=2),
                    not_after=now - timedelta(seconds=1))
    else:
        cert = make(tmp_path, "plc", not_before=now + timedelta(hours=1))
    trust_list.trust(tmp_path / "plc.der")
    with pytest.raises(ServiceError) as err:
        await trust_list.validate(cert, SERVER)
    assert err.value.code == S.BadCertificateTimeInvalid
    assert trust_list.last_rejection is not None
    assert ("expired at" if window == "expired" else "is not valid before") \
        in trust_list.last_rejection
    assert len(list(trust_list.rejected_dir.iterdir())) == 1


async def test_certificate_expiring_in_seconds_passes_until_then(
        tmp_path: Path, trust_list: TrustList) -> None:
    now = datetime.now(UTC)
    cert = make(tmp_path, "plc", not_before=now - timedelta(minutes=1),
                not_after=now + timedelta(seconds=10))
    trust_list.trust(tmp_path / "plc.der")
    await trust_list.validate(cert, SERVER)
    # X.509 keeps whole seconds
    assert now + timedelta(seconds=9) <= expires_at(cert) <= now + timedelta(seconds=10)


async def test_trusted_by_a_ca_certificate(tmp_path: Path, trust_list: TrustList) -> None:
    ca, ca_key = make_ca("Plant CA")
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    trust_list.trust(tmp_path / "ca.pem")  # PEM in, DER in trusted/certs
    await trust_list.validate(issue(ca, ca_key), SERVER)

    other_ca, other_key = make_ca("Other CA")
    with pytest.raises(ServiceError) as err:
        await trust_list.validate(issue(other_ca, other_key), SERVER)
    assert err.value.code == S.BadCertificateUntrusted

    # revoked by the CA's CRL in trusted/crl
    plc = issue(ca, ca_key)
    now = datetime.now(UTC)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
           .last_update(now).next_update(now + timedelta(days=1))
           .add_revoked_certificate(x509.RevokedCertificateBuilder()
                                    .serial_number(plc.serial_number)
                                    .revocation_date(now).build())
           .sign(ca_key, hashes.SHA256()))
    (trust_list.crl_dir / "plant.crl").write_bytes(crl.public_bytes(serialization.Encoding.DER))
    with pytest.raises(ServiceError) as err:
        await trust_list.validate(plc, SERVER)
    assert err.value.code == S.BadCertificateRevoked
    # a file there that is not a CRL: nothing passes (a revocation must not be lost)
    (trust_list.crl_dir / "plant.crl").write_bytes(b"not a crl")
    with pytest.raises(ServiceError) as err:
        await trust_list.validate(issue(ca, ca_key), SERVER)
    assert err.value.code == S.BadCertificateRevocationUnknown
    assert "plant.crl" in (trust_list.last_rejection or "")


async def test_trust_list_is_read_anew_on_each_validation(
        tmp_path: Path, trust_list: TrustList) -> None:
    plc = make(tmp_path, "plc")
    dest = trust_list.trust(tmp_path / "plc.der")
    (trust_list.trusted_dir / "notes.pem").write_text("not a certificate")  # skipped
    await trust_list.validate(plc, SERVER)
    dest.unlink()  # an operator withdraws it
    with pytest.raises(ServiceError):
        await trust_list.validate(plc, SERVER)


async def test_uri_and_role_are_checked(tmp_path: Path, trust_list: TrustList) -> None:
    plc = make(tmp_path, "plc")
    trust_list.trust(tmp_path / "plc.der")
    other_uri = ua.ApplicationDescription(ApplicationUri="urn:elsewhere",
                                          ApplicationType=ua.ApplicationType.Server)
    with pytest.raises(ServiceError) as err:
        await trust_list.validate(plc, other_uri)
    assert err.value.code == S.BadCertificateUriInvalid
    a_client = ua.ApplicationDescription(ApplicationUri=PLC_URI,
                                         ApplicationType=ua.ApplicationType.Client)
    with pytest.raises(ServiceError) as err:
        await trust_list.validate(plc, a_client)
    assert err.value.code == S.BadCertificateUseNotAllowed
    await TrustList(trust_list.pki_dir, peer="client").validate(plc, a_client)


async def test_rejection_log_carries_no_key_material(tmp_path: Path,
                                                     trust_list: TrustList) -> None:
    plc = make(tmp_path, "plc")
    key_pem = (tmp_path / "plc.pem").read_bytes()
    key_body = key_pem.splitlines()[1].decode()
    with capture_logs() as logs, pytest.raises(ServiceError):
        await trust_list.validate(plc, SERVER)
    [entry] = [e for e in logs if e["event"] == "opcua.certificate_rejected"]
    assert entry["log_level"] == "warning"
    assert entry["thumbprint"] == thumbprint(plc)
    assert entry["subject"] == "CN=swapd"
    assert entry["reason"] == "is not trusted"
    assert entry["rejected"].startswith(str(trust_list.rejected_dir))
    text = repr(logs)
    assert "PRIVATE KEY" not in text and key_body not in text


# ------------------------------------------------------------------ secrets


def test_read_password_wants_a_private_file(tmp_path: Path) -> None:
    f = tmp_path / "plc.password"
    f.write_text("s3cret-Pa55\n")
    os.chmod(f, 0o644)
    with pytest.raises(OpcUaSecurityError) as err:
        read_password(f)
    assert str(f) in str(err.value) and "0644" in str(err.value)
    assert "s3cret" not in str(err.value)
    assert isinstance(err.value, ValueError)
    os.chmod(f, 0o600)
    assert read_password(f) == "s3cret-Pa55"
    f.write_text("two newlines\n\n")
    assert read_password(f) == "two newlines\n"  # one stripped
    f.write_text("\n")
    with pytest.raises(OpcUaSecurityError, match="empty"):
        read_password(f)
    with pytest.raises(OpcUaSecurityError, match="no such file"):
        read_password(tmp_path / "missing")
    with pytest.raises(OpcUaSecurityError, match="not a regular file"):
        read_password(tmp_path)


def test_private_key_file_mode(tmp_path: Path) -> None:
    make(tmp_path, "swapd")
    check_private_key_file(tmp_path / "swapd.pem", "plc.opcua.private_key")
    os.chmod(tmp_path / "swapd.pem", 0o640)
    with pytest.raises(OpcUaSecurityError, match=r"plc\.opcua\.private_key .*swapd\.pem: "
                       r"mode 0640"):
        check_private_key_file(tmp_path / "swapd.pem", "plc.opcua.private_key")


def test_load_own_identity_refuses_a_key_of_another_certificate(tmp_path: Path) -> None:
    make(tmp_path, "a")
    make(tmp_path, "b")
    cert, key = load_own_identity(tmp_path / "a.der", tmp_path / "a.pem")
    assert certificate_uri(cert) == PLC_URI and key.key_size == 2048
    with pytest.raises(OpcUaSecurityError, match=r"b\.pem: does not belong to the "
                       r"certificate .*a\.der"):
        load_own_identity(tmp_path / "a.der", tmp_path / "b.pem")
    with pytest.raises(OpcUaSecurityError, match=r"missing\.der: no such file"):
        load_own_identity(tmp_path / "missing.der", tmp_path / "a.pem")
    (tmp_path / "junk.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n")
    os.chmod(tmp_path / "junk.pem", 0o600)
    with pytest.raises(OpcUaSecurityError, match="not an unencrypted private key") as err:
        load_own_identity(tmp_path / "a.der", tmp_path / "junk.pem")
    assert err.value.__cause__ is None and err.value.__context__ is None  # parser not chained


# ------------------------------------------------------------------ swapd certs


def test_cli_create_trust_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert, key = tmp_path / "own" / "swapd.der", tmp_path / "own" / "private" / "swapd.pem"
    args = ["certs", "create", "--cert", str(cert), "--key", str(key),
            "--uri", "urn:swapstation:swapd", "--hostname", "station-7"]
    assert cli.main(args) == 0
    assert cert.is_file() and key.is_file()
    out = capsys.readouterr().out
    made = x509.load_der_x509_certificate(cert.read_bytes())
    assert thumbprint(made) in out and str(cert) in out
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "exists" in err and len(err.strip().splitlines()) == 1
    assert x509.load_der_x509_certificate(cert.read_bytes()) == made  # untouched
    assert cli.main([*args, "--force"]) == 0
    capsys.readouterr()

    pki = tmp_path / "pki"
    config = tmp_path / "swapd.toml"
    config.write_text(f'[plc]\nprotocol = "opcua"\n[plc.opcua]\npki_dir = "{pki}"\n'
                      f'[journal]\npath = "{tmp_path / "journal.sqlite"}"\n')
    plc = make(tmp_path, "plc", common_name="sim-plc")
    assert cli.main(["certs", "trust", str(tmp_path / "plc.der"), "--config", str(config)]) == 0
    assert (pki / "trusted" / "certs" / f"sim-plc [{thumbprint(plc)}].der").is_file()
    capsys.readouterr()
    assert cli.main(["certs", "list", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("trusted") and thumbprint(plc) in lines[0]
    assert "CN=sim-plc" in lines[0] and PLC_URI in lines[0]
    assert cli.main(["certs", "trust", str(config), "--config", str(config)]) == 2
    assert "not an X.509 certificate" in capsys.readouterr().err
