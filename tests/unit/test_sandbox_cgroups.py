"""cgroup handling of the sandbox (`longrl.sandbox.cgroups`) and the launcher protocol.

The v2 tests run on a directory laid out like a delegated cgroup v2 subtree: this machine's
memory, pids and cpu controllers are bound to cgroup v1, and a controller serves one hierarchy
at a time, so a real v2 group with them cannot be made here (a cgroup2 mount in a new mount
namespace is the same hierarchy, with only `hugetlb`). They check what the v2 path writes and
how it reads the kernel's counters, byte for byte. The v1 tests use the real hierarchy.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from longrl.sandbox import host, isolate
from longrl.sandbox.cgroups import Cgroups, RunCgroup
from longrl.sandbox.isolate import Isolator, Limits
from longrl.sandbox.launcher import discard_stub

V2_FILES = {  # control files of a v2 run group, with what the kernel would show
    "memory.max": "max\n",
    "memory.swap.max": "max\n",
    "pids.max": "max\n",
    "cpu.max": "max 100000\n",
    "memory.events": "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n",
    "memory.peak": "52428800\n",
    "cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
    "pids.events": "max 3\n",
    "cgroup.procs": "",
}


def fake_v2(root: Path, monkeypatch) -> Cgroups:
    """A unified hierarchy at `root` whose root delegates memory, pids and cpu."""
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    parent = root / "longrl-sandbox"
    parent.mkdir()
    for name in ("cgroup.subtree_control", "memory.swap.max"):
        (parent / name).write_text("")
    monkeypatch.setattr(Cgroups, "UNIFIED", root)
    return Cgroups("longrl-sandbox")


def fake_v2_group(cgroups: Cgroups) -> RunCgroup:
    d = cgroups.parents["memory"] / "run-test"
    d.mkdir()
    for name, text in V2_FILES.items():
        (d / name).write_text(text)
    return RunCgroup({c: d for c in ("memory", "pids", "cpu")}, v2=True)


def test_v2_discovery_delegates_the_controllers(tmp_path, monkeypatch):
    cgroups = fake_v2(tmp_path, monkeypatch)
    parent = tmp_path / "longrl-sandbox"
    assert cgroups.v2 and cgroups.parents == {c: parent for c in ("memory", "pids", "cpu")}
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert (parent / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"


def test_v2_limits_are_written_and_only_when_they_change(tmp_path, monkeypatch):
    cgroups = fake_v2(tmp_path, monkeypatch)
    group = fake_v2_group(cgroups)
    d = group.dirs["memory"]
    cgroups.apply(group, Limits(memory_mb=100, pids=20, cpus=1.5))
    assert (d / "memory.max").read_text() == str(100 * 1024 * 1024)
    assert (d / "memory.swap.max").read_text() == "0"
    assert (d / "pids.max").read_text() == "20"
    assert (d / "cpu.max").read_text() == "150000 100000"  # 1.5 cores per 100 ms period

    for name in ("memory.max", "pids.max", "cpu.max"):
        (d / name).write_text("untouched")
    cgroups.apply(group, Limits(memory_mb=100, pids=20, cpus=1.5, wall_s=99))  # same limits
    assert {(d / n).read_text() for n in ("memory.max", "pids.max", "cpu.max")} == {"untouched"}
    cgroups.apply(group, Limits(memory_mb=100, pids=21, cpus=1.5))
    assert (d / "pids.max").read_text() == "21"
    assert (d / "memory.max").read_text() == (d / "cpu.max").read_text() == "untouched"


def test_v2_counters_are_read_from_the_kernel_files(tmp_path, monkeypatch):
    group = fake_v2_group(fake_v2(tmp_path, monkeypatch))
    assert group.stats() == {
        "oom_kill": 1,  # memory.events oom_kill, not oom or max
        "memory_peak": 50 * 1024 * 1024,
        "cpu_s": 2.5,  # usage_usec 2500000
        "pids_max_hits": 3,
    }
    (group.dirs["pids"] / "cgroup.procs").write_text("12 34\n")
    assert group.pids() == [12, 34]


# -- the real (v1 here) hierarchy and the launcher ------------------------------------------------


@pytest.fixture(scope="module")
def iso() -> Isolator:
    iso = Isolator(isolate.SandboxConfig(prespawn=0))
    yield iso
    iso.close()


def test_launcher_waits_in_its_cgroup_and_refuses_an_incomplete_header(iso):
    stub = iso._stubs.take(Limits())
    try:
        assert stub.group.pids() == [stub.proc.pid]  # moved in before anything runs
        stub.proc.stdin.write(b"--time_limit\n5\n")  # no empty line: the header never ends
        stub.proc.stdin.close()
        assert stub.proc.wait(timeout=10) == 97
        assert stub.proc.stderr.read().startswith(b"longrl-stub: no complete jail header")
    finally:
        discard_stub(stub)
    assert iso.leftovers() == []


def test_per_run_header_holds_only_what_changes_between_runs(iso):
    args = iso._run_args(["/usr/bin/python3", "main.py"], Limits(), [], [], None)
    assert "/usr" not in args and "--seccomp_policy" in iso._prefix  # constant part: prefix
    assert args[args.index("--") :] == ["--", "/.init", "/usr/bin/python3", "main.py"]
    assert "--rlimit_cpu" in args and "none:/tmp:tmpfs:size=67108864" in args
    with pytest.raises(ValueError, match="single lines"):
        iso._run_args(["/bin/echo", "two\nlines"], Limits(), [], [], None)


def test_static_nsjail_is_preferred_unless_one_is_named(tmp_path, monkeypatch):
    static = tmp_path / "nsjail"
    static.write_text("#!/bin/sh\n")
    static.chmod(static.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(host, "NSJAIL_STATIC", str(static))
    monkeypatch.delenv("NSJAIL", raising=False)
    assert host.find_nsjail(None) == str(static)
    monkeypatch.setenv("NSJAIL", "/bin/true")
    assert host.find_nsjail(None) == "/bin/true"
    assert host.find_nsjail("/bin/false") == "/bin/false"
