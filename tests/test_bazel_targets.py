"""Keeps the Bazel BUILD files in step with the Python tree.

Checks, by parsing the BUILD files (Starlark is Python syntax, so `ast` reads
them) and the Python sources, with no Bazel needed:
- every `tests/**/test_*.py` has exactly one test target (`pytest_test` or
  `py_test`), in its own package, named after the file;
- every other module of the packages is in exactly one `py_library`, and every
  package directory has a BUILD file;
- each target's first-party imports are in its own srcs or a direct dep, and
  every dep label names a target that exists;
- test files marked `pytest.mark.slow` are tagged "slow", and only those.

It reads the real source tree (through this file's resolved path), not Bazel's
runfiles, so inside `bazel test` it sees files that no BUILD file mentions yet;
its target is tagged "external" so Bazel never serves it from the cache.
The last tests cover tests/pytest_runner.py, which runs each file under Bazel.
"""

import ast
import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from tests import pytest_runner

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "objectives", "data", "experiments")
FIRST_PARTY = (*PACKAGES, "tests")
RULES = ("py_library", "py_binary", "py_test", "pytest_test")
TEST_RULES = ("py_test", "pytest_test")
# Python files the pytest_test macro brings in itself (see tests/pytest.bzl).
TEST_SUPPORT = ("__init__.py", "conftest.py")
SUPPORT = "//tests:pytest_support"


@dataclasses.dataclass
class Target:
    """One rule call in a BUILD file; paths are relative to the repo root."""

    package: str
    rule: str
    name: str
    srcs: list[str]
    deps: list[str]
    tags: list[str]

    @property
    def label(self) -> str:
        return f"//{self.package}:{self.name}"


def _literal(call: ast.Call, key: str, build: Path, default):
    for kw in call.keywords:
        if kw.arg == key:
            try:
                return ast.literal_eval(kw.value)
            except ValueError as err:
                # glob() or computed lists would make this check blind.
                where = ast.unparse(call)[:60]
                raise AssertionError(f"{build}: {key} of {where} must be a literal") from err
    return default


def parse_build(build: Path, root: Path = ROOT) -> list[Target]:
    """The py_* / pytest_test targets a BUILD file declares."""
    package = build.parent.relative_to(root).as_posix()
    package = "" if package == "." else package
    targets = []
    for node in ast.parse(build.read_text(), filename=str(build)).body:
        if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
            continue
        call = node.value
        if not (isinstance(call.func, ast.Name) and call.func.id in RULES):
            continue
        srcs = _literal(call, "srcs", build, [])
        targets.append(
            Target(
                package=package,
                rule=call.func.id,
                name=_literal(call, "name", build, None),
                srcs=[f"{package}/{s}".lstrip("/") for s in srcs if not s.startswith("/")],
                deps=[resolve_label(d, package) for d in _literal(call, "deps", build, [])],
                tags=_literal(call, "tags", build, []),
            )
        )
    return targets


def resolve_label(label: str, package: str) -> str:
    """Canonical `//pkg:name` form of a label written in `package`."""
    if label.startswith(":"):
        return f"//{package}{label}"
    if label.startswith("//") and ":" not in label:
        return f"{label}:{label.rsplit('/', 1)[-1]}"
    return label


def short_label(label: str) -> str:
    """`//models:models` -> `//models`, as BUILD files write it."""
    package, name = label.split(":")
    return package if package.rsplit("/", 1)[-1] == name else label


def conftests(package: str, root: Path = ROOT) -> list[str]:
    """The conftest.py files pytest loads for a test in `package` (under tests/)."""
    found, directory = [], Path(package)
    while directory.parts and directory.parts[0] == "tests":
        if (root / directory / "conftest.py").exists():
            found.append((directory / "conftest.py").as_posix())
        directory = directory.parent
    return found


def build_files(root: Path = ROOT) -> list[Path]:
    found = [root / "BUILD"] if (root / "BUILD").exists() else []
    for top in FIRST_PARTY:
        found += sorted((root / top).rglob("BUILD"))
    return found


def python_files(root: Path = ROOT) -> list[str]:
    files = []
    for top in FIRST_PARTY:
        files += [p.relative_to(root).as_posix() for p in (root / top).rglob("*.py")]
    return sorted(f for f in files if "__pycache__" not in f)


def is_test_file(path: str) -> bool:
    return path.startswith("tests/") and Path(path).name.startswith("test_")


def first_party_imports(path: Path, root: Path = ROOT) -> set[str]:
    """Repo files that `path` imports (module files, or the package __init__.py)."""

    def resolve(module: str) -> str | None:
        if module.split(".")[0] not in FIRST_PARTY:
            return None
        rel = module.replace(".", "/")
        for candidate in (f"{rel}.py", f"{rel}/__init__.py"):
            if (root / candidate).exists():
                return candidate
        return None

    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            files = [resolve(alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from models import vit` means models/vit.py if there is one, else
            # a name defined in models/__init__.py.
            files = [
                resolve(f"{node.module}.{alias.name}") or resolve(node.module)
                for alias in node.names
            ]
        else:
            continue
        found.update(f for f in files if f is not None)
    return found


def marked_slow(path: Path) -> bool:
    """Whether a test file uses `pytest.mark.slow` (on a test or as `pytestmark`)."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "slow"
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "mark"
        ):
            return True
    return False


def check(root: Path = ROOT) -> list[str]:
    """All inconsistencies between the BUILD files and the tree, as messages."""
    errors = []
    targets = [t for build in build_files(root) for t in parse_build(build, root)]
    by_label = {t.label: t for t in targets}
    py_files = python_files(root)

    for directory in sorted({str(Path(f).parent) for f in py_files}):
        if not (root / directory / "BUILD").exists():
            errors.append(f"{directory}/ has Python files but no BUILD file")

    for t in targets:
        for src in t.srcs:
            if not (root / src).exists():
                errors.append(f"{t.label} lists {src}, which does not exist")
        for dep in t.deps:
            if dep.startswith("//") and dep not in by_label:
                errors.append(f"{t.label} depends on {dep}, which no BUILD file defines")

    tests = [t for t in targets if t.rule in TEST_RULES]
    libraries = [t for t in targets if t.rule == "py_library"]
    owner = {src: t.label for t in libraries for src in t.srcs}

    def needed_deps(files: list[str]) -> list[str]:
        imported = set().union(*(first_party_imports(root / f, root) for f in files))
        return sorted({short_label(owner[f]) for f in imported - set(files) if f in owner})

    for f in py_files:
        if is_test_file(f):
            owners = [t for t in tests if f in t.srcs]
            package, name = str(Path(f).parent), Path(f).stem
            if not owners:
                deps = [d for d in needed_deps([f, *conftests(package, root)]) if d != SUPPORT]
                tags = ', tags = ["slow"], size = "large"' if marked_slow(root / f) else ""
                errors.append(
                    f"{f} has no test target; add to {package}/BUILD: pytest_test(name = "
                    f'"{name}", srcs = ["{Path(f).name}"], deps = {deps}{tags})'.replace("'", '"')
                )
            elif len(owners) > 1:
                errors.append(f"{f} is in several test targets: {[t.label for t in owners]}")
            elif owners[0].package != package or owners[0].name != name:
                errors.append(f"{f}: its test target must be //{package}:{name}")
            elif marked_slow(root / f) != ("slow" in owners[0].tags):
                errors.append(
                    f"{owners[0].label}: tag 'slow' exactly when {f} uses pytest.mark.slow"
                )
        elif f.startswith("tests/") and Path(f).name in TEST_SUPPORT and f.count("/") > 1:
            continue  # a test package's __init__.py / conftest.py: pytest_test's data
        else:
            owners = [t.label for t in libraries if f in t.srcs]
            if len(owners) != 1:
                errors.append(f"{f} must be in exactly one py_library, is in {owners}")

    for t in targets:
        visible = set(t.srcs)
        # pytest_test adds the shared test support (tests/conftest.py, ...) itself.
        deps = [*t.deps, SUPPORT] if t.rule == "pytest_test" else t.deps
        for dep in deps:
            visible.update(by_label[dep].srcs if dep in by_label else [])
        files = [s for s in t.srcs if s.endswith(".py") and (root / s).exists()]
        if t.rule in TEST_RULES:
            files += conftests(t.package, root)  # pytest imports them for every test
        for src in files:
            for imported in sorted(first_party_imports(root / src, root) - visible):
                hint = f"; add dep {short_label(owner[imported])}" if imported in owner else ""
                errors.append(f"{t.label}: {src} imports {imported}{hint}")
    return errors


def test_build_files_match_the_tree():
    errors = check()
    assert not errors, "BUILD files are out of date:\n  " + "\n  ".join(errors)


@pytest.fixture
def mini_repo(tmp_path: Path) -> Path:
    """A consistent two-package repo: models/ and one test of it."""
    (tmp_path / "BUILD").write_text("")
    (tmp_path / "models").mkdir()
    (tmp_path / "models/__init__.py").write_text("")
    (tmp_path / "models/vit.py").write_text("import numpy\n")
    (tmp_path / "models/BUILD").write_text(
        'py_library(name = "models", srcs = ["__init__.py", "vit.py"])\n'
    )
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests/__init__.py").write_text("")
    (tmp_path / "tests/test_vit.py").write_text(
        "import pytest\nfrom models import vit\n\n@pytest.mark.slow\ndef test_a():\n    pass\n"
    )
    (tmp_path / "tests/BUILD").write_text(
        'load("//tests:pytest.bzl", "pytest_test")\n'
        'py_library(name = "pytest_support", srcs = ["__init__.py"])\n'
        'pytest_test(name = "test_vit", srcs = ["test_vit.py"], deps = ["//models"],'
        ' tags = ["slow"])\n'
    )
    return tmp_path


def test_check_accepts_a_consistent_tree(mini_repo: Path):
    assert check(mini_repo) == []


def test_check_catches_a_test_removed_from_build(mini_repo: Path):
    build = mini_repo / "tests/BUILD"
    build.write_text(build.read_text().split("pytest_test(")[0])
    assert check(mini_repo) == [
        "tests/test_vit.py has no test target; add to tests/BUILD: pytest_test(name = "
        '"test_vit", srcs = ["test_vit.py"], deps = ["//models"], tags = ["slow"], size = "large")'
    ]


def test_check_catches_a_module_missing_from_its_library(mini_repo: Path):
    (mini_repo / "models/text.py").write_text("from models import vit\n")
    assert check(mini_repo) == ["models/text.py must be in exactly one py_library, is in []"]


def test_check_catches_a_missing_dep_and_a_missing_slow_tag(mini_repo: Path):
    build = mini_repo / "tests/BUILD"
    build.write_text(build.read_text().replace('deps = ["//models"], tags = ["slow"]', ""))
    assert sorted(check(mini_repo)) == [
        "//tests:test_vit: tag 'slow' exactly when tests/test_vit.py uses pytest.mark.slow",
        "//tests:test_vit: tests/test_vit.py imports models/vit.py; add dep //models",
    ]


def test_check_catches_stale_entries_and_unknown_labels(mini_repo: Path):
    build = mini_repo / "models/BUILD"
    build.write_text(
        'py_library(name = "models", srcs = ["__init__.py", "vit.py", "gone.py"],'
        ' deps = ["//data"])\n'
    )
    assert sorted(check(mini_repo)) == [
        "//models:models depends on //data:data, which no BUILD file defines",
        "//models:models lists models/gone.py, which does not exist",
    ]


def test_check_needs_a_build_file_per_package_directory(mini_repo: Path):
    (mini_repo / "models/export").mkdir()
    (mini_repo / "models/export/__init__.py").write_text("")
    assert check(mini_repo) == [
        "models/export/ has Python files but no BUILD file",
        "models/export/__init__.py must be in exactly one py_library, is in []",
    ]


def test_runner_maps_bazel_test_env_to_pytest_args():
    env = {
        "TEST_TMPDIR": "/sandbox/tmp",
        "XML_OUTPUT_FILE": "/logs/test.xml",
        "TESTBRIDGE_TEST_ONLY": "sharded",
    }
    assert pytest_runner.pytest_args(["tests/models/test_vit.py", "-x"], env) == [
        "tests/models/test_vit.py",
        "-x",
        "-p",
        "no:cacheprovider",
        "--basetemp",
        "/sandbox/tmp/pytest",
        "--junitxml",
        "/logs/test.xml",
        "-k",
        "sharded",
    ]
    # Outside Bazel (no test env) the file and arguments pass through.
    assert pytest_runner.pytest_args(["t.py"], {}) == ["t.py", "-p", "no:cacheprovider"]


def test_runner_runs_one_shard_of_the_tests(tmp_path: Path):
    (tmp_path / "test_five.py").write_text(
        "import pytest\n\n@pytest.mark.parametrize('i', range(5))\ndef test_i(i):\n    pass\n"
    )
    ran = []
    for index in range(2):
        xml = tmp_path / f"shard{index}.xml"
        env = dict(
            os.environ,
            TEST_TOTAL_SHARDS="2",
            TEST_SHARD_INDEX=str(index),
            TEST_SHARD_STATUS_FILE=str(tmp_path / "status"),
            XML_OUTPUT_FILE=str(xml),
            TEST_TMPDIR=str(tmp_path / f"tmp{index}"),
        )
        runner = ROOT / "tests/pytest_runner.py"
        proc = subprocess.run(
            [sys.executable, str(runner), "test_five.py"], cwd=tmp_path, env=env, check=False
        )
        assert proc.returncode == 0
        ran.append([case.get("name") for case in ElementTree.parse(xml).iter("testcase")])
    assert ran == [["test_i[0]", "test_i[2]", "test_i[4]"], ["test_i[1]", "test_i[3]"]]
    assert (tmp_path / "status").exists()  # tells Bazel that the runner shards
