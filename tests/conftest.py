"""Test setup: 8 host CPU devices so every test exercises sharding."""

import os

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TFDS_DATA_DIR", "/tmp/vlax_tfds_unused")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_report_header(config):
    return f"jax devices: {jax.device_count()} x {jax.devices()[0].platform}"


# XLA:CPU compiles are the suite's main cost (a tiny model's init and train step take
# seconds each); many tests compile identical programs, so share them through the
# persistent cache. One folder per session keeps runs independent.
_CACHE_DIR = os.environ.get("VLAX_TEST_JAX_CACHE") or os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"vlax_jax_cache_{os.getppid()}"
)
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
