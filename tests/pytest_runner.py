"""Runs one pytest file as a Bazel py_test (see tests/pytest.bzl).

Usage (what the py_test passes): pytest_runner.py tests/models/test_vit.py [pytest args]

Maps Bazel's test protocol onto pytest: results go to $XML_OUTPUT_FILE (JUnit
XML, so `bazel test` reports test cases), temporary files under $TEST_TMPDIR,
`--test_filter=EXPR` becomes `pytest -k EXPR`, and a target with
`shard_count = N` runs every N-th collected test in each of N processes.
"""

import os
import sys

# Python puts this script's directory (tests/) first on sys.path, where
# tests/models and tests/data would shadow the top-level models and data
# packages. Tests import from the repo root, which Bazel puts on PYTHONPATH.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import pytest  # noqa: E402


def pytest_args(argv: list[str], environ: dict[str, str]) -> list[str]:
    """Builds pytest's command line from the runner's argv and Bazel's test env."""
    args = list(argv)
    # The runfiles tree is read-only inside the sandbox: no .pytest_cache.
    args += ["-p", "no:cacheprovider"]
    if tmpdir := environ.get("TEST_TMPDIR"):
        args += ["--basetemp", os.path.join(tmpdir, "pytest")]
    if xml := environ.get("XML_OUTPUT_FILE"):
        args += ["--junitxml", xml]
    if test_filter := environ.get("TESTBRIDGE_TEST_ONLY"):
        args += ["-k", test_filter]
    return args


class ShardPlugin:
    """Keeps the collected tests of one Bazel shard: every `total`-th from `index`."""

    def __init__(self, index: int, total: int):
        self.index, self.total = index, total

    def pytest_collection_modifyitems(self, config, items):
        keep = [item for i, item in enumerate(items) if i % self.total == self.index]
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep


def plugins(environ: dict[str, str]) -> list[object]:
    """The shard plugin when Bazel shards this test, after telling Bazel we can."""
    total = int(environ.get("TEST_TOTAL_SHARDS", "1"))
    if total <= 1:
        return []
    if status := environ.get("TEST_SHARD_STATUS_FILE"):
        open(status, "w").close()
    return [ShardPlugin(int(environ["TEST_SHARD_INDEX"]), total)]


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    environ = dict(os.environ)
    shard = plugins(environ)
    code = pytest.main(pytest_args(sys.argv[1:], environ), plugins=shard)
    # A shard may get no test at all (fewer tests than shards): that is a pass.
    if shard and code == pytest.ExitCode.NO_TESTS_COLLECTED:
        return 0
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
