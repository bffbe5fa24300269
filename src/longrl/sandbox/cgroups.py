"""cgroups for sandboxed runs: one fresh group per run under a reused parent (v2 or v1).

`Cgroups` finds the hierarchy (cgroup v2 if its unified tree has memory, pids and cpu; else the
v1 mounts of them), creates the parent `longrl-sandbox` at each root, and makes per-run groups
named `run-<owner pid>-<instance>-<n>`. A `RunCgroup` writes a run's limits, reports its
counters (OOM kills, memory peak, CPU time, pids-limit hits), SIGKILLs everything in it and
removes it. A group is what makes a run's verdict trustworthy: every process of a run, however
it forks, stays in its group, so "kill the group" kills the run.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import time
from pathlib import Path

from longrl.sandbox.limits import IsolationUnavailable, Limits

log = logging.getLogger(__name__)


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


class RunCgroup:
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
                RunCgroup({"x": child}, self.v2).kill_all(1.0)
                RunCgroup({"x": child}, self.v2).remove()
                removed += 1
        return removed
