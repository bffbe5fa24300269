"""The isolation guarantees of `longrl.sandbox.isolate`, one hostile program per guarantee.

Each test runs real untrusted code in a real jail and checks both the verdict and that nothing
outlives the run (processes of the jail's host uid, cgroups, per-run directories).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from longrl.sandbox.isolate import IsolationUnavailable, Isolator, Limits, SandboxConfig

FAST = Limits(wall_s=3.0, memory_mb=128, pids=32)


@pytest.fixture(scope="module")
def iso() -> Isolator:
    return Isolator()


def assert_clean(iso: Isolator) -> None:
    """Nothing of any run is left: processes of the jail's uid, cgroups, per-run directories."""
    deadline = time.monotonic() + 3.0
    while iso.leftovers() and time.monotonic() < deadline:  # the kernel reaps asynchronously
        time.sleep(0.02)
    assert iso.leftovers() == []


def run_py(iso: Isolator, code: str, limits: Limits = FAST, **kw):
    result = iso.run_code("python", code, limits=limits, **kw)
    assert result.compile is None
    return result.run


# -- ordinary programs ----------------------------------------------------------------------------


def test_python_stdin_stdout_and_files(iso):
    run = run_py(
        iso,
        "import sys\nprint(sys.stdin.read().upper(), open('data/x.txt').read())",
        stdin="abc",
        files={"data/x.txt": b"payload"},
    )
    assert run.status == "ok" and run.return_code == 0
    assert run.stdout == b"ABC payload\n"
    assert run.cpu_s is not None and run.memory_peak_mb is not None
    assert_clean(iso)


def test_python_runtime_error_and_exit_code(iso):
    run = run_py(iso, "import sys\nprint('partial')\nsys.exit(3)")
    assert (run.status, run.return_code, run.stdout) == ("error", 3, b"partial\n")
    run = run_py(iso, "1/0")
    assert run.status == "error" and b"ZeroDivisionError" in run.stderr


def test_cpp_compile_and_run(iso):
    code = "#include <iostream>\nint main(){long a,b;std::cin>>a>>b;std::cout<<a*b<<'\\n';}"
    result = iso.run_code("cpp", code, stdin="6 7", limits=FAST)
    assert result.compile.status == "ok" and result.run.stdout == b"42\n"
    broken = iso.run_code("cpp", "int main( { return 0; }", limits=FAST)
    assert broken.compile.status == "error" and broken.run is None
    assert b"error" in broken.compile.stderr
    assert_clean(iso)


def test_large_stdin_is_fed_without_deadlock(iso):
    data = b"x" * (4 << 20)  # larger than any pipe buffer
    run = run_py(iso, "import sys\nprint(len(sys.stdin.buffer.read()))", stdin=data)
    assert run.stdout == b"%d\n" % len(data)


# -- the hostile battery --------------------------------------------------------------------------


def test_fork_bomb_hits_the_pids_limit(iso):
    run = run_py(
        iso,
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        limits=Limits(wall_s=2.0, memory_mb=128, pids=32),
    )
    assert run.status == "timeout" and run.pids_limited
    assert_clean(iso)


def test_memory_bomb_is_oom_killed(iso):
    run = run_py(
        iso,
        "a = []\nwhile True:\n    a.append(bytearray(10 << 20))",
        limits=Limits(wall_s=10.0, memory_mb=100),
    )
    assert run.status == "memory", run
    assert run.memory_peak_mb <= 101
    assert_clean(iso)


def test_cpu_spin_hits_the_cpu_limit(iso):
    # A generous wall clock: on a loaded machine one CPU-second takes longer than one second.
    run = run_py(iso, "while True:\n    pass", limits=Limits(wall_s=30.0, cpu_s=1.0))
    assert run.status == "timeout" and run.message.startswith("CPU time") and 0.8 <= run.cpu_s <= 3.0


def test_sleeping_forever_hits_the_wall_clock(iso):
    start = time.monotonic()
    run = run_py(iso, "import time\ntime.sleep(1000)", limits=Limits(wall_s=0.5))
    assert run.status == "timeout" and time.monotonic() - start < 3.0
    assert_clean(iso)


def test_background_child_dies_with_the_run(iso):
    code = "import subprocess\nsubprocess.Popen(['sleep', '1000'], start_new_session=True)\n"
    code += "print('bye')"
    run = run_py(iso, code)
    assert run.status == "ok" and run.stdout == b"bye\n"
    assert_clean(iso)


def test_no_network(iso):
    code = """
import socket
for family in (socket.AF_INET, socket.AF_INET6, socket.AF_PACKET, socket.AF_NETLINK):
    try:
        socket.socket(family, socket.SOCK_DGRAM if family != socket.AF_PACKET else socket.SOCK_RAW)
        print("opened", family)
    except PermissionError:
        print("refused")
ifaces = [line.split(':')[0].strip() for line in open('/proc/net/dev').read().splitlines()[2:]]
print(ifaces)
"""
    run = run_py(iso, code)
    assert run.stdout.decode().split("\n")[:5] == ["refused"] * 4 + ["['lo']"]


def test_socket_to_localhost_fails(iso):
    code = "import socket\ns = socket.create_connection(('127.0.0.1', 8080), timeout=1)"
    run = run_py(iso, code)
    assert run.status == "error" and b"PermissionError" in run.stderr


def test_host_secrets_and_project_are_invisible(iso):
    project_file = Path(__file__).resolve()
    code = f"""
import os
for path in ('/etc/shadow', '/etc/passwd', '/root', '/home', {str(project_file)!r}, '/sys/kernel'):
    print(path, os.path.exists(path))
"""
    run = run_py(iso, code)
    assert run.status == "ok"
    assert all(line.endswith("False") for line in run.stdout.decode().splitlines()), run.stdout


def test_cannot_write_outside_tmp(iso):
    code = """
import os
for path in ('/x', '/usr/x', '/tmp/../usr/y', '/proc/sys/kernel/hostname', '/dev/shm/../x'):
    try:
        open(path, 'w').write('x')
        print('wrote', path)
    except OSError as exc:
        print(exc.errno)
open('/tmp/ok', 'w').write('fine')
print(open('/tmp/ok').read())
"""
    run = run_py(iso, code)
    assert run.stdout.decode().split() == ["30"] * 5 + ["fine"]  # EROFS everywhere but /tmp


def test_tmp_is_fixed_size(iso):
    code = "f = open('/tmp/big', 'wb')\nfor _ in range(100):\n    f.write(b'x' * (1 << 20))\n"
    run = run_py(iso, code, limits=Limits(wall_s=5, tmp_mb=8, file_mb=512, memory_mb=256))
    assert run.status == "error" and b"No space left on device" in run.stderr


def test_file_size_rlimit(iso):
    code = "f = open('/tmp/big', 'wb')\nf.write(b'x' * (3 << 20))\nf.flush()"
    run = run_py(iso, code, limits=Limits(wall_s=5, file_mb=1))
    assert run.status == "error" and b"File too large" in run.stderr  # Python ignores SIGXFSZ


def test_huge_output_is_capped_and_killed(iso):
    start = time.monotonic()
    run = run_py(
        iso, "while True:\n    print('x' * 10000)", limits=Limits(wall_s=20, output_bytes=100_000)
    )
    assert run.status == "output_limit" and len(run.stdout) == 100_000
    assert time.monotonic() - start < 5.0
    assert_clean(iso)


def test_killing_parent_and_everyone(iso):
    code = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
    code += "os.kill(0, signal.SIGKILL)\nprint('alive')"
    run = run_py(iso, code)
    assert run.status == "error" and run.return_code == 128 + 9  # it killed itself, nothing else
    assert_clean(iso)
    assert run_py(iso, "print('next run')").stdout == b"next run\n"


def test_ptrace_and_process_vm_are_refused(iso):
    code = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
print(libc.ptrace(16, 1, 0, 0), ctypes.get_errno())   # PTRACE_ATTACH to pid 1
print(libc.ptrace(0, 0, 0, 0), ctypes.get_errno())    # PTRACE_TRACEME
print(libc.unshare(0x10000000), ctypes.get_errno())   # CLONE_NEWUSER
print(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None), ctypes.get_errno())
"""
    run = run_py(iso, code)
    assert run.stdout.decode().split() == ["-1", "1"] * 4


def test_privilege_escalation_fails(iso):
    code = """
import os, subprocess
try:
    os.setuid(0)
except OSError as exc:
    print('setuid', exc.errno)
status = open('/proc/self/status').read()
print([l.split()[1] for l in status.splitlines() if l.startswith(('CapEff', 'NoNewPrivs'))])
su = None
if os.path.exists('/usr/bin/su'):
    su = subprocess.run(['/usr/bin/su', '-c', 'id'], capture_output=True)
print(os.getuid(), su is None or su.returncode != 0)
"""
    run = run_py(iso, code)
    lines = run.stdout.decode().splitlines()
    assert lines[0].startswith("setuid")
    assert lines[1] == "['0000000000000000', '1']"
    assert lines[2] == "1000 True"


def test_proc_shows_only_the_jail(iso):
    code = "import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
    code += "print(open('/proc/1/cmdline').read())"
    run = run_py(iso, code)
    pids, cmdline = run.stdout.decode().splitlines()
    assert eval(pids) == [1, 2]  # dumb-init and the program itself
    assert cmdline.startswith("/.init")
    assert str(os.getpid()) not in pids


def test_sandbox_keeps_working_after_the_battery(iso):
    run = run_py(iso, "print(sum(range(10)))")
    assert run.stdout == b"45\n"
    assert_clean(iso)


# -- configuration errors -------------------------------------------------------------------------


def test_unsupported_language_and_bad_file_names(iso):
    with pytest.raises(ValueError, match="language 'cobol'"):
        iso.run_code("cobol", "")
    with pytest.raises(ValueError, match="plain relative path"):
        iso.run_code("python", "", files={"../escape": b""})


def test_unsafe_mode_refused_without_opt_in():
    with pytest.raises(IsolationUnavailable, match="nsjail not found at /nonexistent"):
        Isolator(SandboxConfig(nsjail="/nonexistent"))
    with pytest.warns(RuntimeWarning, match="ISOLATION UNAVAILABLE"):
        unsafe = Isolator(SandboxConfig(init="/nonexistent", allow_unsafe=True))
    assert unsafe.unsafe
    assert unsafe.run_code("python", "print(6*7)").run.stdout == b"42\n"


def test_package_binds_find_the_installed_files_whatever_sys_modules_holds(monkeypatch):
    # importing ray leaves a module named `colorful` with no __spec__ in sys.modules, and
    # importlib.util.find_spec then raises; the jail needs the files on disk, found on sys.path
    import sys
    import types
    from types import SimpleNamespace

    from longrl.sandbox.isolate import Isolator

    pytest.importorskip("colorful")  # installed with cyaron (the `sandbox` extra)
    monkeypatch.setitem(sys.modules, "colorful", types.ModuleType("colorful"))  # __spec__ is None
    stand_in = SimpleNamespace(config=SimpleNamespace(python_packages=["colorful"]))
    [(source, target)] = Isolator._python_package_binds(stand_in)
    assert (source / "__init__.py").is_file() and target == "/opt/longrl-py/colorful"


def test_a_bind_source_others_cannot_reach_is_mounted_from_a_reachable_copy(tmp_path):
    # nsjail refuses to mount from under a mode-0700 directory ("try 'chmod o+x' on source path")
    import os

    from longrl.sandbox.host import reachable

    private = tmp_path / "home"
    (private / "pkg").mkdir(parents=True)
    (private / "pkg" / "__init__.py").write_text("X = 1\n")
    (private / "init").write_bytes(b"\x7fELF")
    os.chmod(private, 0o700)
    for source in (private / "pkg", private / "init"):
        copy = reachable(source)
        assert copy != source and copy.name == source.name
        assert all(os.stat(parent).st_mode & 0o001 for parent in copy.parents)
        assert reachable(source) == copy  # copied once
    assert (reachable(private / "pkg") / "__init__.py").read_text() == "X = 1\n"
    from pathlib import Path

    assert reachable("/usr/bin/env") == Path("/usr/bin/env").resolve()  # reachable: used as it is


def test_a_checkout_under_a_private_directory_runs_jailed_code(tmp_path):
    # The jail's pid 1 and the Python packages it mounts, installed under a mode-0700 directory
    # as in a clone into root's home or `mktemp -d`: a fresh process (as the sandbox self-check of
    # scripts/setup_sandbox.sh) runs code that imports the package, in a real jail.
    import shutil
    import subprocess
    import sys

    from longrl.sandbox.host import find_init

    home = tmp_path / "private-home"
    (home / "site" / "privpkg").mkdir(parents=True)
    (home / "site" / "privpkg" / "__init__.py").write_text("ANSWER = 42\n")
    (home / "bin").mkdir()
    shutil.copy2(find_init(None), home / "bin" / "dumb-init")
    os.chmod(home, 0o700)
    check = (
        "from longrl.sandbox.isolate import Isolator, SandboxConfig\n"
        f"iso = Isolator(SandboxConfig(init={str(home / 'bin' / 'dumb-init')!r}, python_packages=('privpkg',)))\n"
        "run = iso.run_code('python', 'import privpkg; print(privpkg.ANSWER)').run\n"
        "assert run.stdout == b'42\\n', run\n"
        "print('jailed run ok')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(home / "site"), *sys.path])}
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "jailed run ok", proc.stderr[-2000:]
