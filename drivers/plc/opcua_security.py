"""OPC UA security for swapd: its application certificate, the trust list of PLC
certificates, and the secret files (password, private keys).

The trust list is a directory laid out as PLC vendors (and the OPC Foundation's stacks) do:

    pki_dir/trusted/certs   peer certificates, or the CAs that issued them (DER or PEM)
    pki_dir/trusted/crl     revocation lists of those CAs (optional)
    pki_dir/rejected/certs  certificates refused, "<common name> [<SHA-1 thumbprint>].der",
                            for an operator to inspect and, if right, move to trusted/certs
    pki_dir/own/certs       swapd's certificate (`swapd certs create`)
    pki_dir/own/private     swapd's private key, mode 0600

`TrustList.validate` is an asyncua `CertificateValidatorMethod` (the client's
`certificate_validator`, the server's `set_certificate_validator`): it reads the trust
directories anew on each call (an operator may have just moved a file) and checks with
asyncua's `CertificateValidator` and `TrustStore` (validity in time, the application URI,
key usages, the peer's role, trusted directly or by a CA, not revoked).

Nothing here reads or writes a file at import time, and no message, log line or exception
carries a private key or a password.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import anyio
import structlog
from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.ua.status_codes import get_name_and_doc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = structlog.get_logger("swapd.opcua")

#: a certificate made without `not_before` is valid from this long ago, so that a PLC whose
#: clock is somewhat behind does not refuse it as "not yet valid"
BACKDATE = timedelta(days=1)
MAX_SECRET_BYTES = 4096  # a password file larger than this is not a password file
CERT_SUFFIXES = (".der", ".pem", ".crt", ".cer")
CRL_SUFFIXES = (".crl", ".der", ".pem")

Peer = Literal["server", "client"]


class OpcUaSecurityError(ValueError):
    """A certificate, key or password file that cannot be used; the message names the file
    and the problem, never a secret."""


class CertificateRejectedError(ServiceError):
    """A peer certificate refused by `TrustList.validate`: asyncua's `ServiceError` with the
    status asyncua gave (`code`: BadCertificateUntrusted, BadCertificateTimeInvalid, ...),
    and a message saying what was refused, why, and what an operator can do."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code)
        self.args = (message,)
        self.message = message

    @property
    def status(self) -> str:
        return _status_name(self.code)


@dataclass(frozen=True)
class CertInfo:
    """One file of the trust list, as `swapd certs list` shows it. `problem` is set (and the
    other fields empty) for a file that is not a certificate."""

    path: Path
    subject: str
    thumbprint: str  # SHA-1 of the DER, upper-case hex, as OPC UA tools show it
    not_after: datetime | None
    uri: str | None
    problem: str | None = None


_CertInfos = list[CertInfo]


# ------------------------------------------------------------------ certificate helpers


def _status_name(code: int) -> str:
    return get_name_and_doc(code)[0]


def thumbprint(cert: x509.Certificate) -> str:
    """The certificate's SHA-1 thumbprint (upper-case hex), the name OPC UA tools use."""
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # an identifier, not a signature


def expires_at(cert: x509.Certificate) -> datetime:
    """When the certificate stops being valid (UTC)."""
    return cert.not_valid_after_utc


def certificate_uri(cert: x509.Certificate) -> str | None:
    """The first URI of the certificate's subjectAltName (an OPC UA application instance
    certificate's application URI), or None."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except (x509.ExtensionNotFound, ValueError):
        return None
    return uris[0] if uris else None


def common_name(cert: x509.Certificate) -> str | None:
    try:
        attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return None
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _subject_text(cert: x509.Certificate) -> str:
    cn = common_name(cert)
    if cn is not None:
        return f"CN={cn}"
    try:
        return cert.subject.rfc4514_string() or "(empty subject)"
    except ValueError:
        return "(unreadable subject)"


def _file_name(cert: x509.Certificate) -> str:
    """`<common name> [<thumbprint>].der`, the common name reduced to characters safe in a
    file name."""
    cn = re.sub(r"[^A-Za-z0-9 ._()+=@-]", "_", common_name(cert) or "").strip(" .")[:64]
    return f"{cn or 'unnamed'} [{thumbprint(cert)}].der"


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """The certificates of a DER or PEM file's contents (a PEM file may hold several).
    Raises ValueError if there is none."""
    if b"-----BEGIN" in data[:4096]:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def _read_certificate(path: Path, what: str) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise OpcUaSecurityError(f"{what} {path}: no such file") from None
    except OSError as exc:
        raise OpcUaSecurityError(f"{what} {path}: cannot read: {exc.strerror}") from None
    try:
        return load_certificates(data)[0]
    except ValueError:
        raise OpcUaSecurityError(f"{what} {path}: not an X.509 certificate (DER or "
                                 "PEM)") from None


# ------------------------------------------------------------------ making a certificate


def _make_dirs(path: Path, mode: int) -> None:
    """Make `path` and its missing ancestors, each with `mode` (an existing one is left as
    it is)."""
    missing: list[Path] = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, mode)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def _write_file(path: Path, data: bytes, mode: int, overwrite: bool, what: str) -> None:
    """Write a file created with `mode` (never chmod-ed after): a new file only, or with
    `overwrite`, a new file renamed over the old one (so an old file's mode does not
    carry over)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    if not overwrite:
        try:
            fd = os.open(path, flags, mode)
        except FileExistsError:
            raise FileExistsError(f"{what} {path} exists: refusing to overwrite it "
                                  "(overwrite=True, swapd certs create --force)") from None
        try:
            _write_all(fd, data)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, flags, mode)
    try:
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_application_certificate(
    cert_path: Path,
    key_path: Path,
    *,
    application_uri: str,
    common_name: str = "swapd",
    hostnames: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    days: int = 3650,
    key_size: int = 2048,
    organisation: str = "swapstation",
    overwrite: bool = False,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> x509.Certificate:
    """Make a self-signed RSA application instance certificate (OPC UA Part 6, 6.2.2) and
    its key: the certificate as DER at `cert_path`, the key as unencrypted PKCS#8 PEM at
    `key_path`, mode 0600 from its creation. Missing parent directories are made (the
    key's with mode 0700). An existing file is refused (FileExistsError) unless
    `overwrite`; then both are replaced.

    subjectAltName: the application URI first, then the DNS names and IP addresses.
    keyUsage: digitalSignature, nonRepudiation, keyEncipherment, dataEncipherment,
    keyCertSign; extendedKeyUsage: serverAuth and clientAuth (swapd is a client, the
    simulated PLC a server, from the same function); basicConstraints cA=true,
    pathLen=0, as asyncua's own self-signed certificates (the certificate is its own
    issuer); subject and authority key identifiers.

    Valid from a day ago (`BACKDATE`) for `days` days, unless `not_before` / `not_after`
    say otherwise (a naive datetime is taken as UTC).
    """
    cert_path, key_path = Path(cert_path), Path(key_path)
    if not application_uri or ":" not in application_uri:
        raise ValueError(f"application URI {application_uri!r}: not a URI (urn:...)")
    if not 2048 <= key_size <= 4096:
        raise ValueError(f"key size {key_size}: OPC UA's RSA policies take 2048-4096 bits")
    if days < 1:
        raise ValueError(f"days = {days}: a certificate must be valid for at least a day")
    if cert_path.absolute() == key_path.absolute():
        raise ValueError(f"{cert_path}: the certificate and the key cannot be one file")
    ips = [ipaddress.ip_address(a) for a in ip_addresses]  # ValueError names the address
    now = datetime.now(UTC)
    start = not_before if not_before is not None else now - BACKDATE
    end = not_after if not_after is not None else now + timedelta(days=days)
    start, end = (t if t.tzinfo else t.replace(tzinfo=UTC) for t in (start, end))
    if end <= start:
        raise ValueError(f"not_after {end} is not after not_before {start}")
    if not overwrite:  # refuse before making anything (the key's open refuses again)
        for path, what in ((key_path, "private key"), (cert_path, "certificate")):
            if path.exists() or path.is_symlink():
                raise FileExistsError(f"{what} {path} exists: refusing to overwrite "
                                      "it (overwrite=True, swapd certs create --force)")

    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation)])
    serial = x509.random_serial_number()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    alt_names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    alt_names += [x509.DNSName(h) for h in hostnames]
    alt_names += [x509.IPAddress(ip) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier(ski.digest, [x509.DirectoryName(name)],
                                                   serial), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=False)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True,
                                     key_encipherment=True, data_encipherment=True,
                                     key_agreement=False, key_cert_sign=True,
                                     crl_sign=False, encipher_only=False,
                                     decipher_only=False), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _make_dirs(key_path.parent, 0o700)
    _make_dirs(cert_path.parent, 0o755)
    _write_file(key_path, key_pem, 0o600, overwrite, "private key")
    try:
        _write_file(cert_path, cert.public_bytes(serialization.Encoding.DER), 0o644,
                    overwrite, "certificate")
    except BaseException:
        if not overwrite:  # the key was made just now: no key without its certificate
            key_path.unlink(missing_ok=True)
        raise
    return cert


# ------------------------------------------------------------------ secrets


def _check_secret_stat(st: os.stat_result, path: Path, what: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise OpcUaSecurityError(f"{what} {path}: not a regular file")
    if st.st_mode & 0o077:
        raise OpcUaSecurityError(
            f"{what} {path}: mode {stat.S_IMODE(st.st_mode):04o}: a secret must not be "
            "readable or writable by group or others (chmod 600, owned by the service user)")


def check_private_key_file(path: Path, what: str) -> None:
    """A private key file: it exists, is a regular file, and group and others can neither
    read nor write it (mode & 0o077 == 0). Raises OpcUaSecurityError naming `what`, the
    file and its mode."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise OpcUaSecurityError(f"{what} {path}: no such file") from None
    except OSError as exc:
        raise OpcUaSecurityError(f"{what} {path}: cannot read: {exc.strerror}") from None
    _check_secret_stat(st, Path(path), what)


def read_password(path: Path) -> str:
    """The password in a file only its owner may read or write (mode & 0o077 == 0), one
    trailing newline stripped. A file of another mode, not a regular file, not UTF-8 or
    empty is refused with OpcUaSecurityError naming the file (never its content)."""
    path = Path(path)
    what = "password file"
    try:
        # O_NONBLOCK: a FIFO put there does not hang the open; fstat judges what was opened
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise OpcUaSecurityError(f"{what} {path}: no such file") from None
    except OSError as exc:
        raise OpcUaSecurityError(f"{what} {path}: cannot read: {exc.strerror}") from None
    try:
        _check_secret_stat(os.fstat(fd), path, what)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_SECRET_BYTES:
            chunk = os.read(fd, MAX_SECRET_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise OpcUaSecurityError(f"{what} {path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if size > MAX_SECRET_BYTES:
        raise OpcUaSecurityError(f"{what} {path}: larger than {MAX_SECRET_BYTES} bytes: "
                                 "not a password file")
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise OpcUaSecurityError(f"{what} {path}: not UTF-8 text") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise OpcUaSecurityError(f"{what} {path}: empty: no password")
    return text


def load_own_identity(cert_path: Path, key_path: Path
                      ) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """swapd's application certificate and its private key, checked: both exist, the key
    file is not readable by group or others, the key is an unencrypted RSA key (OPC UA's
    policies are RSA) that matches the certificate, and the certificate carries an
    application URI in its subjectAltName. Raises OpcUaSecurityError naming the file."""
    cert_path, key_path = Path(cert_path), Path(key_path)
    cert = _read_certificate(cert_path, "certificate")
    check_private_key_file(key_path, "private key")
    try:
        data = key_path.read_bytes()
    except OSError as exc:
        raise OpcUaSecurityError(f"private key {key_path}: cannot read: "
                                 f"{exc.strerror}") from None
    key: object
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except Exception:  # replaced, not chained: the parser's error may quote the key
        key = None
    if key is None:
        raise OpcUaSecurityError(f"private key {key_path}: not an unencrypted private key "
                                 "(PEM or DER)")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise OpcUaSecurityError(f"private key {key_path}: not an RSA key (OPC UA's "
                                 "security policies use RSA)")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise OpcUaSecurityError(f"private key {key_path}: does not belong to the "
                                 f"certificate {cert_path}")
    if certificate_uri(cert) is None:
        raise OpcUaSecurityError(f"certificate {cert_path}: no application URI in its "
                                 "subjectAltName (not an OPC UA application certificate)")
    return cert, key


# ------------------------------------------------------------------ the trust list


class _CrlUnreadableError(Exception):
    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path


class _TrustDirStore(TrustStore):
    """asyncua's TrustStore reading the directories more carefully: certificate files by
    suffix (.der .pem .crt .cer; asyncua's own loader also takes any name merely
    containing "der" or "pem"), DER or PEM by content, every certificate of a PEM bundle.
    A file in trusted/certs that is not a certificate is skipped (and logged): it trusts
    nothing. A file in trusted/crl that is not a CRL fails every validation
    (BadCertificateRevocationUnknown): a revocation an operator meant must not be lost."""

    async def _load_trust_location(self, location: Path) -> list[x509.Certificate]:
        certs: list[x509.Certificate] = []
        for path in _files(location, CERT_SUFFIXES):
            try:
                certs.extend(load_certificates(await anyio.Path(path).read_bytes()))
            except (OSError, ValueError) as exc:
                log.warning("opcua.trusted_file_unusable", path=str(path),
                            reason=type(exc).__name__)
        return certs

    async def _load_crl_location(self, location: Path) -> list[x509.RevokedCertificate]:
        revoked: list[x509.RevokedCertificate] = []
        for path in _files(location, CRL_SUFFIXES):
            try:
                data = await anyio.Path(path).read_bytes()
                crl = (x509.load_pem_x509_crl(data) if b"-----BEGIN" in data[:4096]
                       else x509.load_der_x509_crl(data))
            except (OSError, ValueError):
                raise _CrlUnreadableError(path) from None
            revoked.extend(crl)
        return revoked


def _files(directory: Path, suffixes: tuple[str, ...]) -> list[Path]:
    try:
        entries = sorted(directory.iterdir())
    except FileNotFoundError:
        return []
    return [p for p in entries if p.suffix.lower() in suffixes and p.is_file()]


class TrustList:
    """The peer certificates swapd (peer "server": it checks PLCs) or the simulated PLC
    (peer "client": it checks swapd) accepts, kept in `pki_dir` (module docstring)."""

    def __init__(self, pki_dir: Path, *, peer: Peer = "server") -> None:
        if peer not in ("server", "client"):
            raise ValueError(f"peer {peer!r}: 'server' or 'client'")
        self.pki_dir = Path(pki_dir)
        self.peer: Peer = peer
        self.trusted_dir = self.pki_dir / "trusted" / "certs"
        self.crl_dir = self.pki_dir / "trusted" / "crl"
        self.rejected_dir = self.pki_dir / "rejected" / "certs"
        role = (CertificateValidatorOptions.PEER_SERVER if peer == "server"
                else CertificateValidatorOptions.PEER_CLIENT)
        self.options = CertificateValidatorOptions.TRUSTED_VALIDATION | role
        self.last_rejection: str | None = None  # why the last certificate was refused

    def ensure_dirs(self) -> None:
        """Make the trust directories (mode 0700) that are missing."""
        for d in (self.trusted_dir, self.crl_dir, self.rejected_dir):
            _make_dirs(d, 0o700)

    async def validate(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        """asyncua's CertificateValidatorMethod. Passes, or copies the certificate to
        rejected/certs (once), logs `opcua.certificate_rejected`, sets `last_rejection`
        and raises CertificateRejectedError (a ServiceError with asyncua's status)."""
        detail: str | None = None
        try:
            store = _TrustDirStore([self.trusted_dir], [self.crl_dir])
            # cryptography refuses an empty x509.verification.Store (ValueError): with no
            # certificate in trusted/certs the store stays unloaded and trusts nothing
            with contextlib.suppress(ValueError):
                await store.load_trust()
            await store.load_crl()
            await CertificateValidator(self.options, store).validate(cert, app)
        except ServiceError as exc:
            code = exc.code
        except _CrlUnreadableError as exc:
            code = ua.StatusCodes.BadCertificateRevocationUnknown
            detail = f"{exc.path} is not a CRL (DER or PEM)"
        except Exception as exc:  # a certificate cryptography cannot read: refused
            code = ua.StatusCodes.BadCertificateInvalid
            detail = f"cannot be read ({type(exc).__name__})"
        else:
            self.last_rejection = None
            return
        message = self._reject(cert, app, code, detail)
        raise CertificateRejectedError(code, message) from None

    def _reason(self, cert: x509.Certificate, app: ua.ApplicationDescription, code: int,
                detail: str | None) -> str:
        s = ua.StatusCodes
        if code == s.BadCertificateUntrusted:
            return "is not trusted"
        if code == s.BadCertificateTimeInvalid:
            if cert.not_valid_before_utc > datetime.now(UTC):
                return (f"is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} "
                        "UTC (or a clock is wrong)")
            return f"expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
        if code == s.BadCertificateUriInvalid:
            return (f"carries URI {certificate_uri(cert)!r}, but the {self.peer} says its "
                    f"application URI is {app.ApplicationUri!r}")
        if code == s.BadCertificateUseNotAllowed:
            return (f"does not allow its use by an OPC UA {self.peer} (keyUsage, "
                    f"extendedKeyUsage, or the application type it describes)")
        if code == s.BadCertificateRevoked:
            return f"is revoked (a CRL in {self.crl_dir})"
        if code == s.BadCertificateRevocationUnknown:
            return f"cannot be checked for revocation: {detail}"
        if code == s.BadCertificateInvalid:
            return detail or ("lacks the subjectAltName, keyUsage or extendedKeyUsage of an "
                              "OPC UA application certificate")
        return f"is refused ({_status_name(code)})"

    def _reject(self, cert: x509.Certificate, app: ua.ApplicationDescription, code: int,
                detail: str | None) -> str:
        subject, thumb = _subject_text(cert), thumbprint(cert)
        reason = self._reason(cert, app, code, detail)
        path = self.rejected_dir / _file_name(cert)
        copied: str
        rejected: str | None = str(path)
        try:
            _make_dirs(self.rejected_dir, 0o700)
            der = cert.public_bytes(serialization.Encoding.DER)
            with contextlib.suppress(FileExistsError):  # rejected before: one file
                _write_file(path, der, 0o644, False, "rejected certificate")
            copied = f"copied to {path}"
        except OSError as exc:
            copied = f"could not be copied to {self.rejected_dir}: {exc.strerror}"
            rejected = None
        message = f"{self.peer} certificate {subject} (sha1 {thumb}) {reason}: {copied}"
        if code == ua.StatusCodes.BadCertificateUntrusted and copied.startswith("copied"):
            message += f"; move it to {self.trusted_dir} to accept it"
        self.last_rejection = message
        log.warning("opcua.certificate_rejected", peer=self.peer, subject=subject,
                    thumbprint=thumb, uri=certificate_uri(cert),
                    status=_status_name(code), reason=reason, rejected=rejected,
                    message=message)
        return message

    def trust(self, cert_file: Path) -> Path:
        """Copy a certificate (DER or PEM; a PEM file's first) into trusted/certs as
        `<common name> [<thumbprint>].der`; returns where. Already there: nothing to do."""
        cert = _read_certificate(Path(cert_file), "certificate")
        self.ensure_dirs()
        path = self.trusted_dir / _file_name(cert)
        with contextlib.suppress(FileExistsError):
            _write_file(path, cert.public_bytes(serialization.Encoding.DER), 0o644, False,
                        "trusted certificate")
        return path

    def list(self) -> dict[str, _CertInfos]:
        """The files of trusted/certs and rejected/certs: {"trusted": [...], "rejected":
        [...]}, by file name."""
        return {"trusted": _infos(self.trusted_dir), "rejected": _infos(self.rejected_dir)}



def _infos(directory: Path) -> _CertInfos:
    out: _CertInfos = []
    for path in _files(directory, CERT_SUFFIXES):
        try:
            certs = load_certificates(path.read_bytes())
        except (OSError, ValueError) as exc:
            problem = exc.strerror if isinstance(exc, OSError) else "not a certificate"
            out.append(CertInfo(path, "", "", None, None, problem=problem))
            continue
        for cert in certs:
            out.append(CertInfo(path, _subject_text(cert), thumbprint(cert),
                                expires_at(cert), certificate_uri(cert)))
    return out
