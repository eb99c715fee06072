"""Process-wide allocator tuning for our own commands: opt-in, never applied on import.

By default glibc serves large allocations with a fresh ``mmap`` and returns them with ``munmap``, so
the feature maps a spiking network allocates and frees T times per layer are faulted in page by page
on every use. :func:`apply_defaults` calls glibc's ``mallopt`` so that it never uses ``mmap`` for single
allocations and never trims the heap top (the same as ``MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=<large>``); freed feature maps are then reused already mapped, at the cost of the
process keeping its peak heap size.

It also installs :mod:`spikingresformer.allocator`, a size-caching allocator for tensors of 1 MiB and
more (each its own mapping, freed blocks reused by size, at most ``$SPIKINGRESFORMER_ALLOC_SLACK_MB``
MiB, default 256, mapped above the peak of live large tensors), which removes the heap fragmentation that the settings above cause
for large blocks; ``SPIKINGRESFORMER_MALLOC=glibc`` keeps only the glibc settings.

``import spikingresformer`` does not call it: a library must not retune its user's process. The
``spikingresformer`` command and the benchmarks call it when they start; Python users who want it call
``spikingresformer.runtime.apply_defaults()`` themselves. ``SPIKINGRESFORMER_MALLOC=system`` opts out;
it is also skipped when glibc is not the C library, when another allocator is preloaded, or when
``MALLOC_MMAP_MAX_``/``MALLOC_TRIM_THRESHOLD_`` are already set. Measurements: ``docs/performance.md``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import subprocess
from typing import Dict, Optional

__all__ = ["SLACK_ENV_VAR", "MALLOC_ENV_VAR", "apply_defaults", "malloc_settings", "tune_glibc_malloc"]

MALLOC_ENV_VAR = "SPIKINGRESFORMER_MALLOC"
#: MiB that the size-caching allocator may keep mapped above the peak of live large tensors
SLACK_ENV_VAR = "SPIKINGRESFORMER_ALLOC_SLACK_MB"
DEFAULT_SLACK_MB = 256

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
    preloaded = any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc"))
    if choice == "tuned" and not preloaded and platform.system() == "Linux":
        _status += "; " + _install_caching_allocator()


def _install_caching_allocator() -> str:
    """Install :mod:`spikingresformer.allocator` for large tensors; a one-line status either way."""
    from . import allocator

    raw = os.environ.get(SLACK_ENV_VAR, str(DEFAULT_SLACK_MB)).strip()
    try:
        slack_mb = int(raw)
        if slack_mb < 0:
            raise ValueError
    except ValueError:
        raise ValueError(f"{SLACK_ENV_VAR} must be a whole number of MiB (0 or more), got {raw!r}") from None
    try:
        settings = allocator.install(min_bytes=1 << 20, slack_bytes=slack_mb << 20)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return f"size-caching allocator unavailable ({str(exc).splitlines()[0][:120]})"
    return f"size-caching allocator for tensors >= 1 MiB, slack {settings['slack_bytes'] >> 20} MiB"
