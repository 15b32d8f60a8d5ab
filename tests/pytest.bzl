"""`pytest_test`: one Bazel py_test per pytest file.

    load("//tests:pytest.bzl", "pytest_test")

    pytest_test(
        name = "test_vit",
        srcs = ["test_vit.py"],
        deps = ["//models"],
    )

The test runs //tests:pytest_runner.py on its one file, with the repo's pytest
setup (tests/conftest.py, the package's __init__.py/conftest.py, pyproject.toml)
in its runfiles and 8 host CPU devices set through the environment, as in
`make test`. Tag tests that carry pytest's `slow` marker with "slow" (and give
them a larger size); tests/test_bazel_targets.py checks that.
"""

TEST_ENV = {
    # The same settings tests/conftest.py makes; set here too so that any
    # subprocess a test starts sees them before it imports jax.
    "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
    "JAX_PLATFORMS": "cpu",
    "TF_CPP_MIN_LOG_LEVEL": "3",
}

def pytest_test(name, srcs, deps = [], data = [], size = "medium", tags = [], args = [], **kwargs):
    """A py_test that runs one pytest file.

    Args:
      name: target name, by convention the file name without `.py`.
      srcs: exactly one file, `test_*.py`, in this package.
      deps: the py_library targets the test imports.
      data: extra runtime files.
      size: Bazel test size (sets the timeout); "large" for slow tests.
      tags: Bazel tags; "slow" for tests marked `@pytest.mark.slow`.
      args: extra pytest arguments.
      **kwargs: passed on to py_test (timeout, shard_count, ...).
    """
    if len(srcs) != 1:
        fail("pytest_test %s: srcs must hold exactly one test file" % name)
    native.py_test(
        name = name,
        srcs = srcs + ["//tests:pytest_runner.py"],
        main = "//tests:pytest_runner.py",
        args = ["$(location %s)" % srcs[0]] + args,
        deps = deps + ["//tests:pytest_support"],
        data = data + native.glob(["__init__.py", "conftest.py"]),
        env = TEST_ENV,
        python_version = "PY3",
        srcs_version = "PY3",
        size = size,
        tags = tags,
        **kwargs
    )
