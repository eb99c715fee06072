"""Process-wide start-up settings applied when :mod:`spikingresformer` is imported.

**Allocator (glibc).** By default glibc serves every allocation above a threshold (128 KiB to
32 MiB, adaptive) with a fresh ``mmap`` and gives it back with ``munmap`` when freed. Spiking
networks allocate and free feature maps of tens to hundreds of MiB T times per layer, so each one
is faulted in page by page again on every use: on a 2-core machine about three quarters of the time
of a fused neuron kernel, and a large share of every big element-wise op, went to page faults.

On import this module therefore calls ``mallopt`` (through :mod:`ctypes`) so that glibc

* never uses ``mmap`` for individual allocations (``M_MMAP_MAX = 0``), and
* never returns the top of the heap to the system (``M_TRIM_THRESHOLD`` = 2**62 - effectively off),

the same as starting Python with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>``. Freed
feature maps are then reused from the heap, already mapped. The cost: the process keeps its peak
heap size (RSS does not shrink after the peak), which is what a training or inference process does
anyway.

Measured on the 2-core development machine (shared, so +-15 %), ``benchmarks/step.py`` with
``spikingresformer_cifar``, batch 16, T=4, ``fused`` neurons, median training step:

=========================  ===============  ===============  =========================
allocator                  bfloat16 step    float32 step     peak RSS (bf16 / fp32)
=========================  ===============  ===============  =========================
glibc defaults             2.26 / 2.57 s    3.79 / 3.75 s    2.66 / 3.94-4.07 GB
glibc tuned (this module)  2.22 / 2.37 s    3.67 / 3.23 s    2.69-2.78 / 4.13-4.15 GB
jemalloc 5.3 (LD_PRELOAD)  4.17 / 4.03 s    7.71 / 7.10 s    2.17 / 3.21 GB
tcmalloc 2.10 (LD_PRELOAD) 2.05 / 1.85 s    3.68 / 3.33 s    2.16 / 3.24 GB
=========================  ===============  ===============  =========================

(two rounds each). The tuned glibc settings are the fastest choice that can be made from inside
the process (a few per cent on a whole step; on a single large element-wise kernel, where page
faults dominate, 1.5x and more). tcmalloc is faster still and uses less memory, but it must be
preloaded before Python starts, e.g. ``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4``
(Debian package ``libtcmalloc-minimal4``); jemalloc with its default decay settings is slower.

Opt out with ``SPIKINGRESFORMER_MALLOC=system`` (leave glibc alone). The settings are also skipped
when glibc is not the C library, when a different allocator is preloaded (``LD_PRELOAD`` naming
jemalloc, tcmalloc or mimalloc), or when the user already set ``MALLOC_MMAP_MAX_`` or
``MALLOC_TRIM_THRESHOLD_`` in the environment. Only allocations made after import are affected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from typing import Dict, Optional

__all__ = ["MALLOC_ENV_VAR", "apply_defaults", "malloc_settings", "tune_glibc_malloc"]

MALLOC_ENV_VAR = "SPIKINGRESFORMER_MALLOC"

# From glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4

_applied: Optional[Dict[str, int]] = None
_status = "not applied"


def _libc() -> Optional[ctypes.CDLL]:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


def tune_glibc_malloc(trim_threshold: int = 2**62, disable_mmap: bool = True) -> Dict[str, int]:
    """Apply the glibc ``mallopt`` settings described in the module docstring; return what was set."""
    libc = _libc()
    if libc is None:
        raise RuntimeError("glibc's mallopt is not available in this process")
    done: Dict[str, int] = {}
    # mallopt takes an int; the largest trim threshold it accepts is INT_MAX on some glibc builds,
    # so clamp there (2 GiB of free heap top kept is plenty to avoid trimming between steps).
    trim = min(int(trim_threshold), 2**31 - 1)
    if libc.mallopt(_M_TRIM_THRESHOLD, trim) == 1:
        done["M_TRIM_THRESHOLD"] = trim
    if disable_mmap and libc.mallopt(_M_MMAP_MAX, 0) == 1:
        done["M_MMAP_MAX"] = 0
    return done


def malloc_settings() -> str:
    """A one-line description of the allocator settings in effect (for logs and benchmarks)."""
    return _status


def apply_defaults() -> None:
    """Apply the default start-up settings once per process (see module docstring for opt-outs)."""
    global _applied, _status
    if _applied is not None:
        return
    _applied = {}
    choice = os.environ.get(MALLOC_ENV_VAR, "tuned").strip().lower()
    preload = os.environ.get("LD_PRELOAD", "")
    if choice in ("system", "off", "0", "no", "false", "default"):
        _status = f"glibc defaults ({MALLOC_ENV_VAR}={choice})"
    elif any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        _status = f"preloaded allocator ({preload})"
    elif "MALLOC_MMAP_MAX_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        _status = "glibc settings from the environment (MALLOC_*_)"
    else:
        try:
            _applied = tune_glibc_malloc()
            _status = "glibc tuned: " + ", ".join(f"{k}={v}" for k, v in _applied.items())
        except RuntimeError:
            _status = "not glibc; allocator untouched"
