"""Training checkpoints that survive a kill at any moment, and exact resumption.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then renamed over
the old one (``os.replace`` is atomic on POSIX): a process killed mid-write leaves the previous
checkpoint intact. Checkpoints hold only tensors and plain containers, so they load with
``torch.load(weights_only=True)``; the ``model`` entry is an ordinary state dict in the official
key layout.
"""

from __future__ import annotations

import io
import os
import random
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch
from torch import nn

from ..model import DSSA

__all__ = ["atomic_save", "rng_state", "set_rng_state", "rate_flags", "set_rate_flags", "load_training_checkpoint"]

# Test hook: seconds to pause half-way through overwriting a checkpoint (lets a test kill a run mid-write).
_PAUSE_ENV = "SPIKINGRESFORMER_TEST_PAUSE_IN_SAVE"


def atomic_save(obj: Dict[str, Any], path: Path) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getbuffer()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            pause = float(os.environ.get(_PAUSE_ENV, "0") or 0)
            if pause > 0 and path.exists():
                f.flush()
                time.sleep(pause)
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def rng_state() -> Dict[str, Any]:
    """Python, NumPy, torch (and CUDA) random states as tensors and plain values."""
    np_state = np.random.get_state()
    state: Dict[str, Any] = {
        "python": random.getstate(),  # (version, tuple of ints, gauss): plain data
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(
        ("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
         state["numpy_has_gauss"], state["numpy_gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rate_flags(model: nn.Module) -> Dict[str, bool]:
    """The DSSA 'first training forward done' flags, which live outside the state dict."""
    return {
        f"{name}.{key}": flag
        for name, m in model.named_modules()
        if isinstance(m, DSSA)
        for key, flag in m._rates_initialised.items()
    }


def set_rate_flags(model: nn.Module, flags: Dict[str, bool]) -> None:
    """Restore the flags saved by :func:`rate_flags`."""
    for name, m in model.named_modules():
        if isinstance(m, DSSA):
            for key in m._rates_initialised:
                m._rates_initialised[key] = bool(flags.get(f"{name}.{key}", m._rates_initialised[key]))


def load_training_checkpoint(path: Path) -> Dict[str, Any]:
    """Read a training checkpoint written by :func:`atomic_save` (tensors and plain data only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path} is not a training checkpoint (expected a dict with 'model', 'optimizer', 'epoch')")
    return ckpt

