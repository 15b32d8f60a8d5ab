"""The host memory allocator of CPU runs: tcmalloc when installed, else a tuned glibc malloc.

XLA:CPU allocates every execution's temporaries afresh (one block: 1.1 GB for the ViT-S/16
CLIP step of the peer benchmark, 4.2 GB at B/16) and frees it when the step ends. glibc's
malloc returns blocks above 32 MB to the OS (`munmap`), and so do its per-thread arenas for
anything larger than 64 MB, so every step maps fresh pages that the kernel faults in and
zeroes one by one: 275k page faults and 0.5 s of system time per 2.0 s S/16 step, 1.1M faults
and 4-5 s per 14 s B/16 step, on 2 cores. glibc's many small allocations also make XLA's
(LLVM's) compilation slower than with a thread-caching allocator.

`use_fast_allocator()`, called first thing by the entry points (train, evaluate, benchmark,
the peer-benchmark child), picks one of:

  "tcmalloc"    gperftools' tcmalloc (Debian/Ubuntu `libtcmalloc-minimal4`): keeps freed
                pages for reuse (TCMALLOC_RELEASE_RATE=0 unless set) and caches small
                allocations per thread. The process re-executes itself once with the
                library in LD_PRELOAD (an allocator must be loaded before anything
                allocates), as Intel's PyTorch launcher does.
  "glibc"       no tcmalloc installed: glibc is told to serve every thread from the main
                heap, never to mmap and never to shrink the heap, so the second step
                reuses the first step's pages. Freed blocks can still be split by small
                allocations, which now and then costs a step its page faults again, and
                the single heap slows compilation a little.
  "system"      nothing changed (VLAX_ALLOCATOR=system).

VLAX_ALLOCATOR=auto (default) | tcmalloc (an error if it is missing) | glibc | system. The
process keeps its peak host memory until it exits, as a training process does anyway.
Accelerators' device memory is not affected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys

ENV_VAR = "VLAX_ALLOCATOR"
CHOICES = ("auto", "tcmalloc", "glibc", "system")
# Set in the re-executed process, so a library that fails to preload cannot loop.
_REEXEC_GUARD = "VLAX_ALLOCATOR_REEXEC"
_TCMALLOC_NAMES = ("tcmalloc_minimal", "tcmalloc")
INSTALL_HINT = "apt-get install libtcmalloc-minimal4"

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
# mallopt takes an int; glibc stores the trim threshold as a size_t, so -1 is SIZE_MAX: the
# heap is never shrunk (2 GB, the largest positive int, is less than a B/16 step's temps).
_NEVER = -1

_glibc_tuned = False


def loaded_allocator() -> str | None:
    """ "tcmalloc" when this process runs with tcmalloc loaded, else None."""
    try:
        with open("/proc/self/maps") as maps:
            text = maps.read()
    except OSError:
        return None
    return "tcmalloc" if "libtcmalloc" in text else None


def active_allocator() -> str:
    """The allocator in effect: "tcmalloc", "glibc" (tuned by this module) or "system"."""
    return loaded_allocator() or ("glibc" if _glibc_tuned else "system")


def find_tcmalloc() -> str | None:
    """The tcmalloc shared library's path (the ldconfig cache), or None."""
    for name in _TCMALLOC_NAMES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def use_fast_allocator() -> str:
    """Makes this process use the fastest host allocator available (module docstring).

    Returns the allocator now in effect: "tcmalloc", "glibc" or "system". May re-execute
    the process (same arguments) to preload tcmalloc; call it before importing JAX and
    only from a program's entry point, never from a library or a test process.
    """
    choice = os.environ.get(ENV_VAR, "auto")
    if choice not in CHOICES:
        raise ValueError(f"{ENV_VAR}={choice!r}: use one of {', '.join(CHOICES)}.")
    if choice == "system":
        return "system"
    if loaded_allocator():
        return "tcmalloc"
    if choice in ("auto", "tcmalloc"):
        library = find_tcmalloc()
        if library and not os.environ.get(_REEXEC_GUARD):
            _reexec_with_preload(library)  # does not return
        if choice == "tcmalloc":
            why = "did not load" if library else "is not installed"
            raise RuntimeError(f"{ENV_VAR}=tcmalloc but tcmalloc {why}: {INSTALL_HINT}.")
    return "glibc" if keep_freed_memory() else "system"


def _reexec_with_preload(library: str) -> None:
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(filter(None, (library, env.get("LD_PRELOAD"))))
    env[_REEXEC_GUARD] = "1"
    # Never hand freed pages back to the OS (tcmalloc's default releases them gradually,
    # and a step then faults its temporaries in again).
    env.setdefault("TCMALLOC_RELEASE_RATE", "0")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def keep_freed_memory() -> bool:
    """Tells glibc's malloc to keep freed memory for reuse (module docstring, "glibc").

    Must run before JAX starts its threads. Returns False where it does not apply (not
    glibc); True once the settings are in effect (also on repeated calls)."""
    global _glibc_tuned
    if _glibc_tuned:
        return True
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER)):
        if libc.mallopt(param, value) != 1:
            raise OSError(f"glibc mallopt rejected parameter {param}; set {ENV_VAR}=system.")
    _glibc_tuned = True
    return True
