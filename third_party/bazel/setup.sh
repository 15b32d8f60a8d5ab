#!/usr/bin/env bash
# Prepares Bazel for this checkout, then runs it with the given arguments.
#
#   third_party/bazel/setup.sh                 install Bazel if missing, configure
#   third_party/bazel/setup.sh test //...      ... then run `bazel test //...`
#
# Bazel is Debian's bazel-bootstrap (4.2.3), which runs offline with the
# stand-ins under third_party/bazel/ (see third_party/README.md). The Python
# toolchain is the checkout's .venv (`make install` creates it).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

if ! command -v bazel >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || {
            echo "bazel is missing: run 'apt-get install -y bazel-bootstrap' as root" >&2
            exit 1
        }
        sudo="sudo"
    fi
    echo "Installing Bazel (Debian bazel-bootstrap) ..."
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine may have empty package lists: update only if needed.
    $sudo apt-get install -y -q bazel-bootstrap >/dev/null ||
        { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q bazel-bootstrap >/dev/null; }
fi

if [ ! -x .venv/bin/python ] && [ -z "${VLAX_PYTHON:-}" ]; then
    echo "No .venv/bin/python: run 'make install' first (or set VLAX_PYTHON)" >&2
    exit 1
fi

# Bazel's output root lives in the checkout (ignored by git), so a clone keeps
# its build state to itself. Startup options need an absolute path, hence a
# generated rc file that .bazelrc try-imports.
mkdir -p .bazel_root
rc="startup --output_user_root=$root/.bazel_root"
if [ "$(cat .bazel_root/bazelrc 2>/dev/null)" != "$rc" ]; then
    echo "$rc" >.bazel_root/bazelrc
fi

if [ "$#" -gt 0 ]; then
    exec bazel "$@"
fi
