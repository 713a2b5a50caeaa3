"""Run a command on a real SocketCAN `vcan0` (and `vcan1`) inside a small qemu VM.

The machines the project runs on have a kernel without CAN (no `CONFIG_CAN`) and a KVM
that stock kernels do not boot under, so the SocketCAN path is tested in a qemu TCG
(software-emulated) VM: Debian's kernel (`linux-image-amd64`, CAN as modules), an
initramfs holding only a static busybox, an /init and the kernel modules it loads, and
the host's own root file system shared read-only over virtio-9p, so the VM runs the same
Python, venv and checkout as the host. A writable work directory is shared the same way
(mounted at its host path); everything else writable is tmpfs. /init brings up loopback,
vcan0 and vcan1, chroots into the host root and runs `<work>/run.sh`; its exit status
comes back through qemu's isa-debug-exit device.

    python -m tests.vcan.vm -- pytest -m vcan tests/vcan      # from the checkout
    python -m tests.vcan.vm --check                            # what is missing, if anything

The initramfs is cached in ~/.cache/swapstation-vcan ($SWAP_VCAN_CACHE), keyed by the
kernel version and a hash of this script, busybox and the modules. Choose another kernel
with $SWAP_VCAN_KERNEL (a vmlinuz whose modules are in /lib/modules/<version>)."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import lzma
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
QEMU = "qemu-system-x86_64"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
# In load order; each one's dependencies (modules.dep) are loaded before it. Debian's 6.1
# kernel builds virtio itself as modules. can-gw is loaded too: a bench may route buses.
MODULES = ("virtio", "virtio_ring", "virtio_pci", "9pnet_virtio", "9p",
           "can", "can-raw", "can-gw", "vcan")
REQUIRED_MODULES = frozenset({"9p", "9pnet_virtio", "virtio_pci", "can", "can_raw", "vcan"})
INSTALL_HINT = ("sudo apt-get install -y --no-install-recommends qemu-system-x86 "
                "linux-image-amd64 busybox-static")
IN_VM_ENV = "SWAP_IN_VCAN_VM"
EXIT_PORT = 0xF4
DEFAULT_TIMEOUT_S = 600.0
MEMORY_MB = 1024
ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|c)")  # the firmware's terminal resets


class VmUnavailable(RuntimeError):
    """What the VM needs is missing on this host; the message says what and how to get it."""


@dataclass(frozen=True)
class Kernel:
    vmlinuz: Path
    version: str
    modules_dir: Path


@dataclass(frozen=True)
class VmResult:
    status: int | None  # the command's exit status; None: the VM never reported one
    output: str  # the VM's console (kernel messages, /init, the command's output)
    boot_s: float | None  # seconds from qemu's start until /init started the command
    total_s: float
    timed_out: bool


# ---- what the host has --------------------------------------------------------------

def find_qemu() -> str | None:
    return shutil.which(QEMU)


def _is_static_elf(path: Path) -> bool:
    """An ELF with no program interpreter (PT_INTERP): it runs in an initramfs alone."""
    try:
        with path.open("rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only
                return False
            phoff, = struct.unpack_from("<Q", head, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def find_busybox() -> Path | None:
    for name in (os.environ.get("SWAP_VCAN_BUSYBOX"), *BUSYBOX_CANDIDATES):
        if name and Path(name).is_file() and _is_static_elf(Path(name)):
            return Path(name)
    return None


def _module_index(modules_dir: Path) -> dict[str, tuple[str, list[str]]]:
    """modules.dep as {module name: (relative path, [dependency paths])}; names use '_'."""
    index: dict[str, tuple[str, list[str]]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        path, _, deps = line.partition(":")
        index[_mod_name(path)] = (path, deps.split())
    return index


def _mod_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return re.sub(r"\.ko(\.(xz|gz|zst))?$", "", base).replace("-", "_")


def find_kernel() -> Kernel | None:
    """$SWAP_VCAN_KERNEL, else the newest /boot/vmlinuz-* whose modules include vcan."""
    chosen = os.environ.get("SWAP_VCAN_KERNEL")
    candidates = [Path(chosen)] if chosen else sorted(
        Path("/boot").glob("vmlinuz-*"), key=lambda p: _version_key(p.name[8:]), reverse=True)
    for vmlinuz in candidates:
        version = vmlinuz.name.removeprefix("vmlinuz-")
        mdir = Path("/lib/modules") / version
        try:
            readable = os.access(vmlinuz, os.R_OK) and (mdir / "modules.dep").is_file()
            if readable and set(_module_index(mdir)) >= REQUIRED_MODULES:
                return Kernel(vmlinuz, version, mdir)
        except OSError:
            continue
    return None


def _version_key(version: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", version)]


def missing() -> list[str]:
    """What this host lacks to run the VM, one phrase each; empty when it can."""
    why = []
    if find_qemu() is None:
        why.append(f"{QEMU} not found (Debian: qemu-system-x86)")
    if find_kernel() is None:
        why.append("no readable /boot/vmlinuz-* with the can, can-raw, vcan and 9p modules "
                   "in /lib/modules (Debian: linux-image-amd64)")
    if find_busybox() is None:
        why.append("no static busybox (Debian: busybox-static)")
    if not (VENV_BIN / "python").exists():
        why.append(f"no venv at {VENV_BIN.parent} (./scripts/test makes it)")
    return why


# ---- the initramfs ------------------------------------------------------------------

INIT = r"""#!/bin/busybox sh
# swapstation vcan VM: load modules, share the host root, bring up vcan, run the command.
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "swap-vcan-vm: $*" > /dev/console; }
bye() {  # exit status to qemu: isa-debug-exit at 0xf4 exits with (status << 1) | 1
    printf "$(printf '\\%03o' "$1")" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
    poweroff -f
}
for m in $(cat /modules.order); do
    insmod "/modules/$m" || { say "insmod $m failed"; bye 120; }
done
arg() { sed -n "s/.*swap_$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
WORK=$(arg work)
REPO=$(arg repo)
VENV=$(arg venv)
# The host root and the venv with cache=loose (imports are ~25 % faster; they do not
# change during a run); the checkout without, so that a file edited on the host while the
# VM runs (a shared working tree) is read as it is, never with a stale size, as garbage.
P9="trans=virtio,version=9p2000.L,msize=262144"
mount -t 9p -o $P9,cache=loose,ro hostroot /newroot \
    || { say "mounting the host root failed"; bye 121; }
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t tmpfs tmpfs /newroot/tmp
mount -t tmpfs tmpfs /newroot/run
# after the tmpfs mounts (a checkout or work dir under /tmp needs its mount point made
# on the tmpfs; elsewhere the mount point exists in the read-only host root)
share() {  # tag, path, options
    mkdir -p "/newroot$2" 2>/dev/null
    mount -t 9p -o "$P9$3" "$1" "/newroot$2" || { say "mounting $2 failed"; bye 121; }
}
[ -n "$REPO" ] && share repo "$REPO" ,ro
[ -n "$VENV" ] && share venv "$VENV" ,cache=loose,ro
share work "$WORK" ""
ip link set lo up
hostname swap-vcan-vm
for bus in vcan0 vcan1; do
    ip link add dev $bus type vcan && ip link set up $bus \
        || { say "creating $bus failed"; bye 123; }
done
say "ready"
chroot /newroot /bin/sh "$WORK/run.sh" < /dev/console > /dev/console 2>&1
status=$?
sync
bye $status
"""


def _module_order(kernel: Kernel) -> list[str]:
    """The module paths to load, each after its dependencies (from modules.dep)."""
    index = _module_index(kernel.modules_dir)
    by_path = {path: name for name, (path, _) in index.items()}
    order: list[str] = []

    def add(name: str) -> None:
        path, deps = index[name]
        if path in order:
            return
        for dep in reversed(deps):  # modules.dep lists the deepest dependency last
            add(by_path[dep])
        order.append(path)

    for name in MODULES:
        key = name.replace("-", "_")
        if key in index:
            add(key)
        elif key in REQUIRED_MODULES:
            raise VmUnavailable(f"kernel {kernel.version} has no module {name}")
    return order


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        raise VmUnavailable(f"{path}: zstd-compressed modules are not supported; "
                            "decompress them or use another kernel")
    return data


def _cpio(entries: Sequence[tuple[str, int, bytes]]) -> bytes:
    """A cpio archive (newc, what the kernel unpacks): (name, mode, data) each."""
    out = io.BytesIO()

    def pad() -> None:
        out.write(b"\0" * (-out.tell() % 4))

    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0)
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + raw)
        pad()
        out.write(data)
        pad()
    return out.getvalue()


def cache_dir() -> Path:
    base = os.environ.get("SWAP_VCAN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "swapstation-vcan")
    return Path(base)


def initramfs(kernel: Kernel, busybox: Path) -> Path:
    """The initramfs for this kernel (built once, then taken from the cache)."""
    order = _module_order(kernel)
    key = hashlib.sha256()
    key.update(Path(__file__).read_bytes())
    for p in (busybox, *(kernel.modules_dir / m for m in order)):
        st = p.stat()
        key.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    path = cache_dir() / f"initramfs-{kernel.version}-{key.hexdigest()[:16]}.cpio.gz"
    if path.exists():
        return path
    d, f, x = 0o040755, 0o100644, 0o100755
    entries: list[tuple[str, int, bytes]] = [
        ("bin", d, b""), ("modules", d, b""), ("proc", d, b""), ("sys", d, b""),
        ("dev", d, b""), ("newroot", d, b""),
        ("bin/busybox", x, busybox.read_bytes()), ("init", x, INIT.encode()),
    ]
    names = []
    for rel in order:
        src = kernel.modules_dir / rel
        name = src.name.removesuffix(src.suffix) if src.suffix in (".xz", ".gz", ".zst") \
            else src.name
        names.append(name)
        entries.append((f"modules/{name}", f, _module_bytes(src)))
    entries.append(("modules.order", f, "\n".join(names).encode() + b"\n"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(gzip.compress(_cpio(entries), 6))
    tmp.replace(path)  # atomic: a concurrent run sees the whole file or none
    for old in path.parent.glob(f"initramfs-{kernel.version}-*.cpio.gz"):
        if old != path:
            old.unlink(missing_ok=True)
    return path


# ---- running it ---------------------------------------------------------------------

def _run_script(argv: Sequence[str], cwd: Path, env: dict[str, str]) -> str:
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    return ("set -u\n" + exports + f"export PATH={shlex.quote(str(VENV_BIN))}:"
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
            f"cd {shlex.quote(str(cwd))} || exit 124\n"
            f"exec {shlex.join(argv)}\n")


def vm_env(work: Path) -> dict[str, str]:
    """The command's environment inside the VM: the host root is read-only there."""
    return {
        IN_VM_ENV: "1",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "SWAP_ARTIFACTS": str(work / "test-artifacts"),  # failed rigs save theirs here
        "LANG": "C.UTF-8",
        "TERM": "dumb",
    }


def run(argv: Sequence[str], *, work: Path | None = None, cwd: Path = REPO,
        env: dict[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT_S,
        on_line: Callable[[str], None] | None = None) -> VmResult:
    """Boot the VM, run `argv` in `cwd` (inside the host root), return its status and the
    console output. `work` is shared writable at the same path (default: a temporary
    directory, removed afterwards); `on_line` sees each console line as it comes."""
    why = missing()
    if why:
        raise VmUnavailable("; ".join(why))
    kernel, busybox, qemu = find_kernel(), find_busybox(), find_qemu()
    assert kernel is not None and busybox is not None and qemu is not None
    image = initramfs(kernel, busybox)
    own_tmp = None
    if work is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="swap-vcan-")
        work = Path(own_tmp.name)
    work = work.resolve()
    for p in (work, REPO, VENV_BIN.parent):
        if re.search(r"\s", str(p)):
            raise ValueError(f"{p}: no white space (it goes on the kernel command line)")
    try:
        (work / "run.sh").write_text(_run_script(argv, cwd, {**vm_env(work), **(env or {})}))
        return _boot(qemu, kernel, image, work, timeout, on_line)
    finally:
        if own_tmp is not None:
            own_tmp.cleanup()


def _share(tag: str, path: Path, *, readonly: bool) -> list[str]:
    return ["-virtfs", f"local,path={path},mount_tag={tag},security_model=none,"
                       f"multidevs=remap{',readonly=on' if readonly else ''}"]


def _boot(qemu: str, kernel: Kernel, image: Path, work: Path, timeout: float,
          on_line: Callable[[str], None] | None) -> VmResult:
    # the venv gets its own (cached) share when it lies inside the checkout's
    venv_share = VENV_BIN.parent.resolve().is_relative_to(REPO)
    cmd = [
        qemu, "-accel", "tcg,thread=multi", "-cpu", "max", "-machine", "q35",
        # two CPUs: no faster for the tier as a whole (measured), but swapd and the
        # simulator each get one, so swapd's PLC reads are not starved past the contract's
        # 0.5 s staleness (one CPU: plc_inputs_stale 0.52 s in CI)
        "-smp", os.environ.get("SWAP_VCAN_SMP", "2"), "-m", str(MEMORY_MB),
        "-nographic", "-display", "none",
        "-monitor", "none", "-serial", "stdio", "-no-reboot", "-nodefaults",
        "-kernel", str(kernel.vmlinuz), "-initrd", str(image),
        "-append", f"console=ttyS0 panic=-1 quiet loglevel=3 random.trust_cpu=on "
                   f"swap_work={work} swap_repo={REPO} "
                   + (f"swap_venv={VENV_BIN.parent}" if venv_share else ""),
        *_share("hostroot", Path("/"), readonly=True),
        *_share("repo", REPO, readonly=True),
        *(_share("venv", VENV_BIN.parent, readonly=True) if venv_share else ()),
        *_share("work", work, readonly=False),
        "-device", f"isa-debug-exit,iobase={EXIT_PORT:#x},iosize=0x04",
    ]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    lines: list[str] = []
    ready: list[float] = []

    def pump() -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = ANSI.sub("", raw.decode(errors="replace")).rstrip("\r\n").replace("\r", "")
            if line.endswith("swap-vcan-vm: ready") and not ready:
                ready.append(time.monotonic() - start)
            lines.append(line)
            if on_line is not None:
                on_line(line)

    reader = threading.Thread(target=pump, name="vcan-vm console", daemon=True)
    reader.start()
    timed_out = False
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    total = time.monotonic() - start
    # isa-debug-exit: qemu exits with (byte << 1) | 1; any other exit is not the command's
    status = (rc >> 1) if (not timed_out and rc % 2 == 1) else None
    if timed_out:
        lines.append(f"swap-vcan-vm: timed out after {timeout:g} s; the VM was killed")
    elif status is None:
        lines.append(f"swap-vcan-vm: qemu exited with {rc} without the command's status")
    return VmResult(status, "\n".join(lines), ready[0] if ready else None, total, timed_out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.vcan.vm", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="say what is missing to run the VM (exit 1 if anything)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds for the whole VM run (default %(default)g)")
    parser.add_argument("--work", type=Path, help="writable dir shared at its own path")
    parser.add_argument("command", nargs="*", help="command to run in the checkout "
                        "(default: a shell listing the CAN interfaces)")
    args = parser.parse_args(argv)
    why = missing()
    if args.check or why:
        for w in why:
            print(f"missing: {w}", file=sys.stderr)
        if why:
            print(f"install: {INSTALL_HINT}", file=sys.stderr)
            return 1
        kernel = find_kernel()
        assert kernel is not None
        print(f"ok: {find_qemu()}, kernel {kernel.version}, busybox {find_busybox()}; "
              f"initramfs {initramfs(kernel, find_busybox())}")  # type: ignore[arg-type]
        return 0
    command = args.command or ["sh", "-c", "ip -d link show type vcan || ip link"]
    res = run(command, work=args.work, timeout=args.timeout, on_line=print)
    print(f"swap-vcan-vm: status {res.status}, ready after "
          f"{res.boot_s if res.boot_s is None else round(res.boot_s, 1)} s, "
          f"total {res.total_s:.1f} s", file=sys.stderr)
    return 125 if res.status is None else res.status


if __name__ == "__main__":
    sys.exit(main())
