"""cgroups for sandboxed runs: one fresh group per run under a reused parent (v2 or v1).

`Cgroups` finds the hierarchy (cgroup v2 if its unified tree has memory, pids and cpu; else the
v1 mounts of them), creates the parent `longrl-sandbox` at each root, and makes per-run groups
named `run-<owner pid>-<instance>-<n>`. A `RunCgroup` takes in a run's launcher, writes its
limits, reports its counters (OOM kills, memory peak, CPU time, pids-limit hits), SIGKILLs
everything in it and removes it. A group is what makes a run's verdict trustworthy: every
process of a run, however it forks, stays in its group, so "kill the group" kills the run.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import time
from pathlib import Path

from longrl.sandbox.limits import IsolationUnavailable, Limits

log = logging.getLogger(__name__)


# Control files are read and written on every run's path: os-level I/O on string paths, which
# costs a fraction of pathlib's object and text layers.


def _read(path: str | Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return ""
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode()
    except OSError:
        return ""
    finally:
        os.close(fd)


def _write(path: str | Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)  # as `echo v > file` does
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _keyed(text: str) -> dict[str, int]:
    """Parse 'key value' lines (memory.events, pids.events, memory.oom_control, cpu.stat)."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


class RunCgroup:
    """The per-run cgroup directories (one per v1 controller, or one v2 directory)."""

    def __init__(self, dirs: dict[str, Path], v2: bool):
        self.dirs, self.v2 = dirs, v2
        self.applied: Limits | None = None  # what the control files hold (None: unknown)
        self._at = {c: str(d) + "/" for c, d in dirs.items()}  # controller -> "dir/"
        self._procs = sorted({f"{d}/cgroup.procs" for d in dirs.values()})
        # Every process of a run is in all of its controllers' groups (it is moved into each
        # before it starts the jail), so one of them lists them all.
        self._members = self._procs[0] if "pids" not in dirs else self._at["pids"] + "cgroup.procs"

    def procs_files(self) -> list[Path]:
        return [Path(p) for p in self._procs]

    def enter(self, pid: int) -> None:
        """Move process `pid` into the group (every controller's directory)."""
        for procs in self._procs:
            _write(procs, str(pid))

    def pids(self) -> list[int]:
        return [int(p) for p in _read(self._members).split()]

    def kill_all(self, timeout_s: float = 5.0) -> None:
        """SIGKILL every process in the group until it is empty (fork bombs included)."""
        if self.v2:
            with contextlib.suppress(FileNotFoundError):  # cgroup.kill: kernel 5.14+
                _write(self._members.replace("cgroup.procs", "cgroup.kill"), "1")
        deadline = time.monotonic() + timeout_s
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.002)

    def stats(self) -> dict[str, float | int | bool]:
        at = self._at
        if self.v2:
            d = at["memory"]
            peak = _read(d + "memory.peak").strip()
            return {
                "oom_kill": _keyed(_read(d + "memory.events")).get("oom_kill", 0),
                "memory_peak": int(peak) if peak.isdigit() else -1,
                "cpu_s": _keyed(_read(d + "cpu.stat")).get("usage_usec", 0) / 1e6,
                "pids_max_hits": _keyed(_read(d + "pids.events")).get("max", 0),
            }
        usage = _read(at["cpuacct"] + "cpuacct.usage").strip() if "cpuacct" in at else ""
        peak = _read(at["memory"] + "memory.max_usage_in_bytes").strip()
        return {
            "oom_kill": _keyed(_read(at["memory"] + "memory.oom_control")).get("oom_kill", 0),
            "memory_peak": int(peak) if peak.isdigit() else -1,
            "cpu_s": int(usage) / 1e9 if usage.isdigit() else -1.0,
            "pids_max_hits": _keyed(_read(at["pids"] + "pids.events")).get("max", 0),
        }

    def remove(self) -> None:
        for d in dict.fromkeys(self._at.values()):  # v2: one directory for all controllers
            for _ in range(200):  # rmdir is EBUSY for a moment after the last task exits
                try:
                    os.rmdir(d)
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
    UNIFIED = Path("/sys/fs/cgroup")  # where a v2 (unified) hierarchy is mounted
    _instances = itertools.count()

    def __init__(self, name: str = "longrl-sandbox"):
        self.name = name
        self.v2, self.parents = self._discover()
        # Run groups are named run-<pid>-<instance>-<n>: owner process, then this object.
        self._prefix = f"run-{os.getpid()}-{next(self._instances)}-"
        self._seq = itertools.count()
        memory = self.parents["memory"]
        self._swap_file = "memory.swap.max" if self.v2 else "memory.memsw.limit_in_bytes"
        self._has_swap_file = (memory / self._swap_file).exists()  # swap accounting is on

    def _discover(self) -> tuple[bool, dict[str, Path]]:
        unified = self.UNIFIED
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

    def create(self, limits: Limits) -> RunCgroup:
        run_name = f"{self._prefix}{next(self._seq)}"
        dirs = {c: p / run_name for c, p in self.parents.items()}
        for d in set(dirs.values()):
            d.mkdir()
        group = RunCgroup(dirs, self.v2)
        try:
            self.apply(group, limits)
        except OSError:
            group.remove()
            raise
        return group

    def apply(self, group: RunCgroup, limits: Limits) -> None:
        """Write `limits` into the group's control files (allowed while it is in use).

        Only the limits that differ from what the group already holds are written: a launcher
        is prepared with the defaults, and most runs use them."""
        before = group.applied
        at = group._at
        if before is None or before.memory_mb != limits.memory_mb:
            self._apply_memory(at["memory"], limits.memory_mb * 1024 * 1024, before)
        if before is None or before.pids != limits.pids:
            _write(at["pids"] + "pids.max", str(limits.pids))
        if before is None or before.cpus != limits.cpus:
            quota = int(limits.cpus * 100_000)
            if self.v2:
                _write(at["cpu"] + "cpu.max", f"{quota} 100000")
            else:
                _write(at["cpu"] + "cpu.cfs_period_us", "100000")
                _write(at["cpu"] + "cpu.cfs_quota_us", str(quota))
        group.applied = limits

    def _apply_memory(self, memory: str, limit: int, before: Limits | None) -> None:
        if self.v2:
            _write(memory + "memory.max", str(limit))
            if self._has_swap_file:
                _write(memory + "memory.swap.max", "0")
            return
        files = [memory + "memory.limit_in_bytes"]
        if self._has_swap_file:
            # memsw (memory+swap) must stay >= the memory limit, so raise it first and lower it
            # last; equal to it means no swapping around the limit.
            memsw = memory + self._swap_file
            current = int(_read(files[0]) or 0) if before is None else before.memory_mb << 20
            files = [memsw, files[0]] if current < limit else [files[0], memsw]
        for f in files:
            _write(f, str(limit))

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
                RunCgroup({"x": child}, self.v2).kill_all(1.0)
                RunCgroup({"x": child}, self.v2).remove()
                removed += 1
        return removed
