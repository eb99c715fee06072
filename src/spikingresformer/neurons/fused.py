"""The ``fused`` neuron backend: forward and backward each one pass over time, as custom operators.

``torch.ops.spikingresformer.fused_neuron_forward`` and ``..._backward`` (see :mod:`.common`) are
one node each for autograd, ``torch.compile`` and ``torch.export``, with two implementations:

* ``"c"`` (default on CPU): the kernels of ``kernels.c`` (package data), built on first use with the
  system C compiler (``$CC``, ``gcc``, ``cc`` or ``clang``; no PyTorch headers, about two seconds)
  into ``~/.cache/spikingresformer/kernels``, keyed by the source, compiler, flags and CPU, and
  called through :mod:`ctypes`. OpenMP shares PyTorch's ``libgomp``. The same library packs spikes
  into bits for :mod:`.bits`.
* ``"torch"``: the same scheme in PyTorch element-wise ops, on any device and dtype; the automatic
  fallback (with one warning) when no compiler is there or the build fails.

Backward keeps only the pre-reset membrane ``h`` (PLIF also its input ``x``); spikes are recomputed
as ``h >= v_threshold``. Forward arithmetic is the reference loop's, so spikes are bit-identical.
``SPIKINGRESFORMER_FUSED_IMPL`` (``auto``/``c``/``torch``, read once) or :func:`use_impl` forces an
implementation; ``SPIKINGRESFORMER_KERNEL_CACHE`` moves the cache.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Tuple

import torch

from .common import KIND_CODES, register_neuron_ops
from .surrogate import atan_surrogate_grad

__all__ = ["FUSED_OPS", "fused_multistep", "c_kernel_available", "build_c_kernel", "c_function", "use_impl",
           "IMPL_ENV_VAR", "CACHE_ENV_VAR", "DTYPE_NAMES"]

IMPL_ENV_VAR = "SPIKINGRESFORMER_FUSED_IMPL"
CACHE_ENV_VAR = "SPIKINGRESFORMER_KERNEL_CACHE"

#: dtypes the C kernels handle, by the suffix of their function names
DTYPE_NAMES = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16", torch.float16: "f16"}
#: the kernels' source, shipped as package data (its content is part of the cache key)
C_SOURCE_PATH = Path(__file__).with_name("kernels.c")

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_lib_error: Optional[str] = None
_lib_tried = False
_warned = False


# -- building and loading the c kernel -------------------------------------------------------------


def _cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spikingresformer" / "kernels"


def _cpu_signature() -> str:
    """CPU feature flags (the library is built with ``-march=native``, so the cache key includes them)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> Optional[str]:
    cc = os.environ.get("CC")
    if cc and shutil.which(cc.split()[0]):
        return cc
    for name in ("gcc", "cc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    return None


_FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-fopenmp"],
    ["-O3"],
)
_COMMON_FLAGS = ["-std=gnu11", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC"]


def build_c_kernel(force: bool = False) -> ctypes.CDLL:
    """Compile (or load from the cache) the C kernel library; raise ``RuntimeError`` if impossible."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (looked for $CC, gcc, cc, clang)")
    try:
        version = subprocess.run(
            cc.split() + ["-dumpfullversion", "-dumpversion"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"cannot run the C compiler {cc!r}: {exc}") from exc
    cache = _cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=cache, delete=True)
        probe.close()
    except OSError:
        cache = Path(tempfile.gettempdir()) / f"spikingresformer-kernels-{os.getuid()}"
        cache.mkdir(parents=True, exist_ok=True)
    errors = []
    source = C_SOURCE_PATH.read_text()
    for flags in _FLAG_SETS:
        key = hashlib.sha256(
            "\0".join([source, cc, version, " ".join(flags + _COMMON_FLAGS), _cpu_signature()]).encode()
        ).hexdigest()[:20]
        target = cache / f"srf_neuron_{key}.so"
        if not target.exists() or force:
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                out = Path(tmp) / "srf_neuron.so"
                proc = subprocess.run(
                    cc.split() + flags + _COMMON_FLAGS + [str(C_SOURCE_PATH), "-o", str(out)],
                    capture_output=True, text=True, timeout=300,
                )
                if proc.returncode != 0:
                    errors.append(f"{' '.join(flags)}: {proc.stderr.strip()[-2000:]}")
                    continue
                os.replace(out, target)  # atomic: concurrent builders never see a partial file
        try:
            lib = ctypes.CDLL(str(target))
        except OSError as exc:
            errors.append(f"{' '.join(flags)}: load failed: {exc}")
            continue
        _declare(lib)
        return lib
    raise RuntimeError("building the fused neuron kernel failed:\n" + "\n".join(errors))


def _declare(lib: ctypes.CDLL) -> None:
    vp, i64, d, i = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
    for dname in DTYPE_NAMES.values():
        for kname in KIND_CODES:
            fwd = getattr(lib, f"srf_fwd_{dname}_{kname}", None)
            if fwd is None:  # e.g. no _Float16 support in this compiler
                continue
            fwd.argtypes = [vp, vp, vp, i64, i64, d, d, d, i]
            fwd.restype = None
            bwd = getattr(lib, f"srf_bwd_{dname}_{kname}")
            bwd.argtypes = [vp, vp, vp, vp, i64, i64, d, d, d, d, i]
            bwd.restype = d
    for dname in DTYPE_NAMES.values():  # spike bit packing (see spikingresformer.neurons.bits)
        for fname in (f"srf_pack_{dname}", f"srf_unpack_{dname}"):
            fn = getattr(lib, fname)
            fn.argtypes = [vp, vp, i64, i]
            fn.restype = None


def _get_lib() -> Optional[ctypes.CDLL]:
    global _lib, _lib_error, _lib_tried
    if _lib_tried:
        return _lib
    with _lock:
        if not _lib_tried:
            try:
                _lib = build_c_kernel()
            except Exception as exc:  # any failure means: use the PyTorch implementation
                _lib, _lib_error = None, str(exc)
            _lib_tried = True
    return _lib


def c_kernel_available() -> bool:
    """Whether the compiled CPU kernel can be used in this process (builds it on first call)."""
    return _get_lib() is not None


_impl_choice: Optional[str] = None


def _chosen_impl() -> str:
    """``SPIKINGRESFORMER_FUSED_IMPL`` (``auto``/``c``/``torch``), read once per process."""
    global _impl_choice
    if _impl_choice is None:
        choice = os.environ.get(IMPL_ENV_VAR, "auto").lower() or "auto"
        if choice not in ("auto", "c", "torch"):
            raise ValueError(f"{IMPL_ENV_VAR} must be 'auto', 'c' or 'torch', got {choice!r}")
        _impl_choice = choice
    return _impl_choice


@contextmanager
def use_impl(choice: str) -> Iterator[None]:
    """Force the ``fused`` backend's implementation (``"c"``, ``"torch"`` or ``"auto"``) inside a block."""
    global _impl_choice
    if choice not in ("auto", "c", "torch"):
        raise ValueError(f"fused implementation must be 'auto', 'c' or 'torch', got {choice!r}")
    old = _chosen_impl()
    _impl_choice = choice
    try:
        yield
    finally:
        _impl_choice = old


def c_function(name: str, t: torch.Tensor, dtype: torch.dtype) -> Optional[Any]:
    """The C function ``srf_{name}_<dtype>`` for the contiguous CPU tensor ``t``, or ``None`` where PyTorch
    ops must do (another device or dtype, ``use_impl("torch")``, or no compiled library)."""
    if t.device.type != "cpu" or dtype not in DTYPE_NAMES or not t.is_contiguous() or _chosen_impl() == "torch":
        return None
    lib = _get_lib()
    return None if lib is None else getattr(lib, f"srf_{name}_{DTYPE_NAMES[dtype]}", None)


def _impl_for(x: torch.Tensor) -> str:
    """``"c"`` or ``"torch"`` for input ``x``."""
    global _warned
    choice = _chosen_impl()
    if choice == "torch" or x.device.type != "cpu" or x.dtype not in DTYPE_NAMES:
        return "torch"
    lib = _get_lib()
    if lib is None:
        if choice == "c":
            raise RuntimeError(f"{IMPL_ENV_VAR}=c but the C kernel is unavailable: {_lib_error}")
        if not _warned:
            warnings.warn(
                "spikingresformer: the fused C neuron kernel could not be built, using the slower "
                f"PyTorch implementation instead. Reason: {_lib_error}",
                RuntimeWarning,
                stacklevel=4,
            )
            _warned = True
        return "torch"
    if not hasattr(lib, f"srf_fwd_{DTYPE_NAMES[x.dtype]}_lif"):
        return "torch"
    return "c"


# -- memory layout helpers -------------------------------------------------------------------------


def _time_major_dense(x: torch.Tensor) -> bool:
    """True if ``x`` covers its memory without gaps and time is its outermost axis (any inner order)."""
    if x.dim() < 1 or x.numel() == 0:
        return False
    if x.is_contiguous():
        return True
    n = x.numel() // x.shape[0]
    if x.stride(0) != n and x.shape[0] > 1:
        return False
    dims = sorted((x.stride(i), x.shape[i]) for i in range(1, x.dim()) if x.shape[i] != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def _like(ref: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``t`` with exactly ``ref``'s strides (copying only if needed)."""
    if t.stride() == ref.stride() and t.dtype == ref.dtype:
        return t
    out = torch.empty_strided(ref.shape, ref.stride(), dtype=ref.dtype, device=ref.device)
    out.copy_(t)
    return out


# -- the two implementations -----------------------------------------------------------------------


def _torch_forward(x: torch.Tensor, kind: str, coef: Any, vth: float, vr: float, store_h: bool):
    spikes = torch.empty_like(x)
    hs = torch.empty_like(x) if store_h else None
    v: Any = vr
    for t in range(x.shape[0]):
        if kind == "if":
            h = v + x[t]
        elif kind == "lif":
            h = v + (x[t] - (v - vr)) / coef
        else:
            h = v + (x[t] - (v - vr)) * coef
        s = h >= vth
        spikes[t].copy_(s)
        if hs is not None:
            hs[t].copy_(h)
        v = h.masked_fill(s, vr)
    return spikes, hs


def _torch_backward(hs: torch.Tensor, x: Optional[torch.Tensor], grad: torch.Tensor, kind: str, coef: Any,
                    vth: float, vr: float, alpha: float):
    grad_x = torch.empty_like(hs)
    gv: Optional[torch.Tensor] = None
    gk = torch.zeros((), dtype=torch.float64, device=hs.device)
    for t in range(hs.shape[0] - 1, -1, -1):
        h = hs[t]
        s = h >= vth
        g = grad[t] * atan_surrogate_grad(h - vth, alpha)
        if gv is not None:
            g = g + gv.masked_fill(s, 0.0)
        if kind == "if":
            grad_x[t].copy_(g)
            gv = g
        elif kind == "lif":
            grad_x[t].copy_(g / coef)
            gv = g - g / coef
        else:
            grad_x[t].copy_(g * coef)
            gv = g - g * coef
            assert x is not None
            vp = hs[t - 1].masked_fill(hs[t - 1] >= vth, vr) if t > 0 else vr
            gk += (g.double() * (x[t] - (vp - vr)).double()).sum()
    return grad_x, gk


def _coef(kind: str, tau: float, w: Optional[torch.Tensor], impl: str, device: torch.device) -> Any:
    """The charge coefficient: PLIF's ``sigmoid(w)`` (a float for the C kernel), LIF's tau, or 1."""
    if kind == "plif":
        k = torch.sigmoid(w.detach())  # type: ignore[union-attr]
        return k.item() if impl == "c" else k.to(device)
    return tau if kind == "lif" else 1.0


def _forward_impl(x: torch.Tensor, w: Optional[torch.Tensor], kind: str, tau: float, vth: float, vr: float,
                  store_h: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Kernel of ``spikingresformer::fused_neuron_forward``: spikes and (if asked) the membrane ``h``."""
    impl = _impl_for(x)
    coef = _coef(kind, tau, w, impl, x.device)
    if x.numel() == 0:
        spikes, h = torch.empty_like(x), (torch.empty_like(x) if store_h else None)
    elif impl == "c":
        xc = x if _time_major_dense(x) else x.contiguous()
        spikes, h = torch.empty_like(xc), (torch.empty_like(xc) if store_h else None)
        getattr(_lib, f"srf_fwd_{DTYPE_NAMES[x.dtype]}_{kind}")(
            xc.data_ptr(), spikes.data_ptr(), h.data_ptr() if h is not None else None, x.shape[0],
            x.numel() // x.shape[0], coef, vth, vr, torch.get_num_threads())
        if xc is not x:  # back to the strides the fake implementation promises (empty_like(x))
            spikes = torch.empty_like(x).copy_(spikes)
            h = _like(spikes, h) if h is not None else None
    else:
        spikes, h = _torch_forward(x, kind, coef, vth, vr, store_h)
    return spikes, (h if h is not None else x.new_empty(0))


def _backward_impl(h: torch.Tensor, x: Optional[torch.Tensor], grad: torch.Tensor, w: Optional[torch.Tensor],
                   kind: str, tau: float, vth: float, vr: float, alpha: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Kernel of ``spikingresformer::fused_neuron_backward``: ``grad_x`` and the summed gradient of k."""
    impl = _impl_for(h)
    coef = _coef(kind, tau, w, impl, h.device)
    if h.numel() == 0:
        return torch.empty_like(h), torch.zeros((), dtype=torch.float64, device=h.device)
    if impl == "c":
        hc = h if _time_major_dense(h) else h.contiguous()
        xc, gc = (_like(hc, x) if x is not None else None), _like(hc, grad)  # kept alive during the call
        grad_x = torch.empty_like(hc)
        gk = getattr(_lib, f"srf_bwd_{DTYPE_NAMES[h.dtype]}_{kind}")(
            hc.data_ptr(), xc.data_ptr() if xc is not None else None, gc.data_ptr(), grad_x.data_ptr(),
            h.shape[0], h.numel() // h.shape[0], coef, vth, vr, alpha, torch.get_num_threads())
        if hc is not h:
            grad_x = torch.empty_like(h).copy_(grad_x)
        return grad_x, torch.tensor(gk, dtype=torch.float64, device=h.device)
    grad_x, gk = _torch_backward(h, x, grad, kind, coef, vth, vr, alpha)
    return grad_x, gk


#: The registered operators (``torch.ops.spikingresformer.fused_neuron_forward`` / ``_backward``).
FUSED_OPS = register_neuron_ops("fused_neuron", _forward_impl, _backward_impl)


def fused_multistep(
    x: torch.Tensor,
    kind: str,
    tau: float = 2.0,
    w: Optional[torch.Tensor] = None,
    v_threshold: float = 1.0,
    v_reset: float = 0.0,
    alpha: float = 2.0,
) -> torch.Tensor:
    """Fused multi-step neuron; same arguments and results as ``reference_multistep``."""
    return FUSED_OPS(x, kind, tau, w, v_threshold, v_reset, alpha)
