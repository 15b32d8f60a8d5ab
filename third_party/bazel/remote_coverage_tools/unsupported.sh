#!/usr/bin/env bash
# See BUILD: `bazel coverage` is not supported offline; use pytest-cov instead.
echo "bazel coverage is not supported in vlax's offline setup; use pytest --cov" >&2
exit 1
