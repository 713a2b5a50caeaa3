"""deploy/swapd.service: its hardening score, its directives, and that swapd's code paths
run without writable+executable memory (MemoryDenyWriteExecute=yes)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "swapd.service"
MAX_EXPOSURE = 1.5
ALLOWED_FAMILIES = {"AF_UNIX", "AF_INET", "AF_INET6", "AF_CAN", "AF_NETLINK"}


def _directives() -> list[tuple[str, str]]:
    out = []
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.append((key.strip(), value.strip()))
    return out


def _analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    return tool


def test_exposure_score_at_most_1_5() -> None:
    tool = _analyze()
    res = subprocess.run([tool, "security", "--offline=true", "--threshold=15", str(UNIT)],
                         capture_output=True, text=True, timeout=60, check=False)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", res.stdout)
    assert m, f"no exposure line in:\n{res.stdout}\n{res.stderr}"
    assert float(m.group(1)) <= MAX_EXPOSURE, res.stdout


def test_verify_knows_every_directive() -> None:
    """verify complains about /opt/swapd not existing on a build machine; any other
    complaint (an unknown or misspelt key, a bad value) is ours."""
    tool = _analyze()
    res = subprocess.run([tool, "verify", str(UNIT)], capture_output=True, text=True,
                         timeout=60, check=False)
    lines = [ln for ln in (res.stdout + res.stderr).splitlines()
             if ln.strip() and "is not executable" not in ln]
    assert not lines, "\n".join(lines)


def test_directives_the_station_needs() -> None:
    d = _directives()
    keys = {k for k, _ in d}
    assert "PrivateNetwork" not in keys  # it would hide can0
    assert "Nice" not in keys and "CPUSchedulingPolicy" not in keys  # need CAP_SYS_NICE
    for key, want in [("Type", "notify"), ("NotifyAccess", "main"), ("User", "swapd"),
                      ("Group", "swapd"), ("CapabilityBoundingSet", ""),
                      ("IPAddressDeny", "any"), ("MemoryDenyWriteExecute", "yes")]:
        assert (key, want) in d, key
    for key in ("WatchdogSec", "ExecStartPre", "StateDirectory", "RuntimeDirectory",
                "ConfigurationDirectory"):
        assert key in keys, key
    families = [v for k, v in d if k == "RestrictAddressFamilies"]
    assert families
    for value in families:
        assert set(value.split()) <= ALLOWED_FAMILIES, value


MDWE_CHILD = textwrap.dedent("""
    import ctypes, mmap, ssl, sys
    libc = ctypes.CDLL(None, use_errno=True)
    # PR_SET_MDWE (65), PR_MDWE_REFUSE_EXEC_GAIN (1): the kernel's MemoryDenyWriteExecute
    if libc.prctl(65, 1, 0, 0, 0) != 0:
        print("prctl", ctypes.get_errno()); sys.exit(77)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        print("W+X memory was allowed"); sys.exit(3)
    except PermissionError:
        pass
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.x509.oid import NameOID
    from asyncua.crypto import uacrypto
    from station.cloud.signing import sign_command
    # Ed25519 command signatures
    key = Ed25519PrivateKey.generate()
    signed = sign_command({"cmd": "hold"}, "k1", key)
    assert signed["signature"]
    # an OPC UA application certificate, RSA sign and encrypt as asyncua does
    rkey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "swapd")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(rkey.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(rkey, hashes.SHA256()))
    sig = uacrypto.sign_sha256(rkey, b"data")
    uacrypto.verify_sha256(cert, b"data", sig)
    ct = uacrypto.encrypt_rsa_oaep(rkey.public_key(), b"secret")
    assert uacrypto.decrypt_rsa_oaep(rkey, ct) == b"secret"
    # the MQTT link's TLS context
    ssl.create_default_context().load_default_certs()
    # the whole daemon against the simulator: Modbus, CAN, journal, sequence
    from station.cli import main
    sys.argv = ["swapd", "demo", "--swaps", "1", "--speed", "50"]
    sys.exit(main())
""")


def test_code_paths_work_without_write_execute_memory(tmp_path: Path) -> None:
    """systemd enforces MemoryDenyWriteExecute with seccomp; PR_SET_MDWE is the kernel's
    own form of the same rule (no mapping both writable and executable, no exec gained
    later), so a library that needed W+X memory (a libffi closure) fails here too."""
    res = subprocess.run([sys.executable, "-c", MDWE_CHILD], cwd=tmp_path, capture_output=True,
                         text=True, timeout=240, check=False)
    if res.returncode == 77:
        pytest.skip(f"kernel without PR_SET_MDWE (Linux >= 6.3): {res.stdout.strip()}")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "completed" in res.stdout
