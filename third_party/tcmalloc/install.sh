#!/usr/bin/env bash
# Best effort: installs gperftools' tcmalloc (Debian/Ubuntu libtcmalloc-minimal4), the host
# allocator that experiments/training/host_memory.py preloads for CPU runs. Only as root (CI,
# containers); never asks for a password and never fails the build: without tcmalloc the
# entry points fall back to a tuned glibc malloc.
set -u
python="${1:-python3}"
if "$python" -c 'import sys; sys.path.insert(0, "."); from experiments import host_memory as h; sys.exit(h.find_tcmalloc() is None)' 2>/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: tcmalloc not installed; CPU steps are faster with it: apt-get install libtcmalloc-minimal4" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1; } ||
    echo "note: could not install libtcmalloc-minimal4; using glibc malloc" >&2
exit 0
