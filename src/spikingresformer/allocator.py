"""A size-caching CPU allocator for large tensors: reuse without heap fragmentation.

A training step allocates the same tensor sizes in the same order every step. glibc either serves
large blocks from its heap (fast reuse, but blocks of mixed sizes fragment it, so the process keeps
hundreds of MB it no longer uses) or with a fresh ``mmap`` (no fragmentation, but every block is
faulted in and zeroed again on each use, which costs more time than the arithmetic of many layers).
This allocator takes PyTorch's CPU allocations of at least ``min_bytes``: each is its own ``mmap``
(2 MiB-aligned and marked for transparent huge pages when large), and a freed block is kept in a
list for its exact page-rounded size and handed to the next request of that size. Blocks are
returned to the system only when a request finds no block of its size and mapping a new one would
make the mapped total exceed the largest live total seen so far plus ``slack_bytes`` (the fullest
size class goes first). The process then holds at most its peak of live large tensors plus the
slack, while steady-state training reuses nearly every block without a page fault.
Smaller requests go to ``c10::alloc_cpu``, what PyTorch's default CPU allocator calls (glibc's ``malloc``).

It is C++ against PyTorch's ``c10::Allocator`` interface, compiled on first use like the neuron
kernels (``$SPIKINGRESFORMER_KERNEL_CACHE``); without a C++ compiler :func:`install` raises
``RuntimeError`` and nothing changes. Our commands install it through
:func:`spikingresformer.runtime.apply_defaults`; ``import spikingresformer`` never does.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Dict, Optional

import torch

__all__ = ["install", "installed", "stats", "CXX_SOURCE"]

CXX_SOURCE = r"""
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <pthread.h>
#include <sys/mman.h>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace {

constexpr size_t kPage = 4096;
constexpr size_t kHuge = 2u << 20;

struct SizeCachingAllocator final : public c10::Allocator {
  size_t min_bytes = 1u << 20;
  size_t slack = 0;  // mapped bytes allowed above the largest live total seen so far
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;  // rounded size -> cached blocks
  std::unordered_map<void*, size_t> block_size;                // every block of ours, live or cached
  size_t live = 0, cached = 0, peak = 0, peak_live = 0, hits = 0, misses = 0, returned = 0;

  static size_t rounded(size_t n) {
    size_t unit = n >= 4 * kHuge ? kHuge : kPage;
    return (n + unit - 1) / unit * unit;
  }

  static void* map_block(size_t size) {
    if (size < 4 * kHuge) {
      void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      return p == MAP_FAILED ? nullptr : p;
    }
    // over-map by 2 MiB and cut both ends so that the block starts on a huge-page boundary
    size_t span = size + kHuge;
    char* raw = static_cast<char*>(mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (raw == MAP_FAILED) return nullptr;
    uintptr_t start = (reinterpret_cast<uintptr_t>(raw) + kHuge - 1) & ~(uintptr_t)(kHuge - 1);
    char* p = reinterpret_cast<char*>(start);
    if (p > raw) munmap(raw, p - raw);
    char* end = p + size;
    if (raw + span > end) munmap(end, raw + span - end);
    madvise(p, size, MADV_HUGEPAGE);
    return p;
  }

  void release_cache_locked() {
    for (auto& kv : free_blocks) {
      for (void* p : kv.second) { munmap(p, kv.first); block_size.erase(p); cached -= kv.first; ++returned; }
      kv.second.clear();
    }
  }

  // Return cached blocks to the system, fullest size class first, until `need` more bytes fit.
  void evict_locked(size_t need) {
    while (cached > 0 && live + cached + need > peak_live + slack) {
      auto best = free_blocks.end();
      size_t best_bytes = 0;
      for (auto it = free_blocks.begin(); it != free_blocks.end(); ++it) {
        size_t bytes = it->first * it->second.size();
        if (bytes > best_bytes) { best_bytes = bytes; best = it; }
      }
      if (best == free_blocks.end()) break;
      void* p = best->second.back();
      best->second.pop_back();
      munmap(p, best->first);
      block_size.erase(p);
      cached -= best->first;
      ++returned;
    }
  }

  void* take(size_t size) {
    std::lock_guard<std::mutex> g(mu);
    void* p = nullptr;
    auto it = free_blocks.find(size);
    if (it != free_blocks.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
      cached -= size;
      ++hits;
    } else {
      if (live + size > peak_live) peak_live = live + size;
      evict_locked(size);
      p = map_block(size);
      if (p == nullptr) {  // out of memory: give the whole cache back and try once more
        release_cache_locked();
        p = map_block(size);
        if (p == nullptr) return nullptr;
      }
      block_size[p] = size;
      ++misses;
    }
    live += size;
    if (live > peak_live) peak_live = live;
    if (live + cached > peak) peak = live + cached;
    return p;
  }

  void give_back(void* p) {
    std::unique_lock<std::mutex> g(mu);
    auto it = block_size.find(p);
    if (it == block_size.end()) {  // a small block from c10::alloc_cpu
      g.unlock();
      c10::free_cpu(p);
      return;
    }
    size_t size = it->second;
    live -= size;
    free_blocks[size].push_back(p);  // kept: what is mapped never exceeds the peak live bytes + slack
    cached += size;
  }

  c10::DataPtr allocate(size_t n) override {
    void* p = n >= min_bytes ? take(rounded(n)) : nullptr;
    if (p == nullptr) p = c10::alloc_cpu(n);  // small requests; it also reports out-of-memory
    return {p, p, &delete_block, c10::Device(c10::DeviceType::CPU)};
  }

  static void delete_block(void* p);

  // one deleter for every block (raw_allocate/raw_deallocate callers rely on it)
  c10::DeleterFnPtr raw_deleter() const override { return &delete_block; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }
};

SizeCachingAllocator* g_alloc = nullptr;

void SizeCachingAllocator::delete_block(void* p) { g_alloc->give_back(p); }

}  // namespace

// fork() (DataLoader workers) while another thread holds the lock would leave the child's copy
// locked forever: hold it across the fork so both sides start from a consistent, unlocked state.
static void before_fork() { if (g_alloc) g_alloc->mu.lock(); }
static void after_fork() { if (g_alloc) g_alloc->mu.unlock(); }

extern "C" int srf_alloc_abi_version() { return 1; }

extern "C" int srf_alloc_install(int64_t min_bytes, int64_t slack_bytes) {
  if (g_alloc != nullptr) return 0;
  g_alloc = new SizeCachingAllocator();  // never freed: blocks may outlive any scope
  g_alloc->min_bytes = static_cast<size_t>(min_bytes);
  g_alloc->slack = static_cast<size_t>(slack_bytes);
  pthread_atfork(before_fork, after_fork, after_fork);
  c10::SetCPUAllocator(g_alloc, /*priority=*/100);
  return 1;
}

extern "C" void srf_alloc_stats(int64_t* out) {
  if (g_alloc == nullptr) { for (int i = 0; i < 6; ++i) out[i] = 0; return; }
  std::lock_guard<std::mutex> g(g_alloc->mu);
  out[0] = g_alloc->live; out[1] = g_alloc->cached; out[2] = g_alloc->peak;
  out[3] = g_alloc->hits; out[4] = g_alloc->misses; out[5] = g_alloc->returned;
}

extern "C" void srf_alloc_trim() {
  if (g_alloc == nullptr) return;
  std::lock_guard<std::mutex> g(g_alloc->mu);
  g_alloc->release_cache_locked();
}
"""

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_settings: Optional[Dict[str, int]] = None


def _build() -> ctypes.CDLL:
    """Compile (or load from the kernel cache) the allocator library."""
    from .neurons.fused import _cache_dir

    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cxx:
        raise RuntimeError("no C++ compiler found (looked for $CXX, g++, c++, clang++)")
    torch_dir = Path(torch.__file__).resolve().parent
    abi = int(torch.compiled_with_cxx11_abi())
    flags = ["-O2", "-std=c++17", "-shared", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
             f"-I{torch_dir / 'include'}", f"-L{torch_dir / 'lib'}", "-lc10", f"-Wl,-rpath,{torch_dir / 'lib'}"]
    key = hashlib.sha256("\0".join([CXX_SOURCE, cxx, torch.__version__, str(torch_dir), *flags]).encode()).hexdigest()[:20]
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"srf_alloc_{key}.so"
    if not target.exists():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            src = Path(tmp) / "srf_alloc.cpp"
            src.write_text(CXX_SOURCE)
            out = Path(tmp) / "srf_alloc.so"
            proc = subprocess.run([cxx, str(src), "-o", str(out), *flags], capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"building the caching allocator failed: {proc.stderr.strip()[-1500:]}")
            os.replace(out, target)
    lib = ctypes.CDLL(str(target))
    if lib.srf_alloc_abi_version() != 1:
        raise RuntimeError("caching allocator library: ABI version mismatch")
    lib.srf_alloc_install.argtypes = [ctypes.c_int64, ctypes.c_int64]
    lib.srf_alloc_install.restype = ctypes.c_int
    lib.srf_alloc_stats.argtypes = [ctypes.POINTER(ctypes.c_int64)]
    lib.srf_alloc_stats.restype = None
    lib.srf_alloc_trim.restype = None
    return lib


def install(min_bytes: int = 1 << 20, slack_bytes: int = 256 << 20) -> Dict[str, int]:
    """Make the size-caching allocator PyTorch's CPU allocator for this process (once); return its settings.

    ``min_bytes``: smallest request it serves; ``slack_bytes``: how far the mapped total may exceed
    the largest live total seen so far (freed blocks kept for reuse within it).
    Raises ``RuntimeError`` if it cannot be built; tensors that exist already keep their allocator.
    """
    global _lib, _settings
    if min_bytes < 4096 or slack_bytes < 0:
        raise ValueError(f"expected min_bytes >= 4096 and slack_bytes >= 0, got {min_bytes} and {slack_bytes}")
    with _lock:
        if _settings is None:
            lib = _build()
            lib.srf_alloc_install(int(min_bytes), int(slack_bytes))
            _lib, _settings = lib, {"min_bytes": int(min_bytes), "slack_bytes": int(slack_bytes)}
    return dict(_settings)


def installed() -> bool:
    """Whether :func:`install` has run in this process."""
    return _settings is not None


def stats() -> Dict[str, int]:
    """Bytes live and cached (freed, kept), the peak of their sum, and counts of reuses, new maps and returns."""
    out = (ctypes.c_int64 * 6)()
    if _lib is not None:
        _lib.srf_alloc_stats(out)
    return dict(zip(("live_bytes", "cached_bytes", "peak_bytes", "reused", "mapped", "returned"), out))
