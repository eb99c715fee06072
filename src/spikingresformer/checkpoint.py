"""Loading checkpoints safely (``torch.load(weights_only=True)``) and writing ``.safetensors`` weights."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
from torch import nn

__all__ = ["LoadResult", "CheckpointError", "CheckpointNotFoundError", "file_kind", "read_checkpoint_file",
           "read_state_dict", "load_checkpoint", "safetensors_metadata", "save_weights", "unwrap_model"]

PathLike = Union[str, os.PathLike]
#: key of a model's JSON description (``config.json``'s content) in a ``.safetensors`` header
CONFIG_KEY = "spikingresformer_config"
_CONTAINER_KEYS = ("model", "state_dict", "model_ema")


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not fit the model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint, model folder or weight file that was named does not exist."""


@dataclass
class LoadResult:
    """What :func:`load_checkpoint` did: keys it could not fill and keys it did not use."""

    missing_keys: List[str] = field(default_factory=list)
    unexpected_keys: List[str] = field(default_factory=list)
    skipped_keys: List[str] = field(default_factory=list)


_ZIP_MAGIC = b"PK\x03\x04"


def file_kind(path: Path) -> str:
    """What a file holds by its first bytes: ``torch``, ``torch-legacy`` or ``safetensors``; else an error."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint (was its write interrupted?)")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(_ZIP_MAGIC):
        return "torch"
    if len(head) > 8 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if header_len > size - 8:
            raise CheckpointError(
                f"{path} is a truncated safetensors file: its header needs {header_len} bytes but the file "
                f"holds {size} (was its write or download interrupted?)"
            )
        return "safetensors"
    if head[:1] == b"\x80":
        return "torch-legacy"
    shown = head[:12].decode("ascii", "replace")
    kind = "a text file" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "an unknown binary file"
    raise CheckpointError(
        f"{path} is {kind} (it starts with {shown!r}), not a checkpoint: expected a PyTorch file "
        f"(torch.save) or a .safetensors file"
    )


def read_checkpoint_file(path: PathLike) -> Any:
    """Read a checkpoint file without running code from it; any problem is a :class:`CheckpointError`."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist")
    kind = file_kind(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error type for damaged files
            raise CheckpointError(f"{path} is a damaged safetensors file: {e}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {path}: it holds objects other than tensors and plain containers "
            f"(loading it would run code from the file). Details: {str(e).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        what = "a truncated or damaged PyTorch file" if kind == "torch" else "a damaged legacy PyTorch file"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is {what} ({path.stat().st_size} bytes): {first}") from None


def read_state_dict(source: Union[PathLike, Mapping[str, Any]]) -> Dict[str, torch.Tensor]:
    """The model state dict in a file or loaded dict: a training checkpoint's ``model`` or a bare state dict."""
    if isinstance(source, (str, os.PathLike)):
        data: Any = read_checkpoint_file(source)
    elif isinstance(source, Mapping):
        data = source
    else:
        raise CheckpointError(f"expected a path or a dict, got {type(source).__name__}")
    if not isinstance(data, Mapping):
        raise CheckpointError(f"expected a dict in the checkpoint, got {type(data).__name__}")
    for key in _CONTAINER_KEYS:
        if key in data and isinstance(data[key], Mapping):
            data = data[key]
            break
    bad = [k for k, v in data.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"expected a state dict of tensors; entries {bad[:5]} are not tensors "
            f"(top-level keys: {sorted(data)[:10]})"
        )
    # without the prefixes of DDP (module.) and torch.compile (_orig_mod.)
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in data.items()}


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    return "float" if (dtype.is_floating_point or dtype.is_complex) else "integer"


def _first(items: List[str]) -> str:
    return "; ".join(items[:10]) + (f" and {len(items) - 10} more" if len(items) > 10 else "")


def load_checkpoint(
    model: nn.Module,
    source: Union[PathLike, Mapping[str, Any]],
    *,
    exclude_classifier: bool = False,
    strict: bool = True,
) -> LoadResult:
    """Load ``source`` into ``model``; report what did not match.

    ``exclude_classifier``: keep the model's head (transfer). ``strict``: refuse missing or unexpected keys.
    """
    state = read_state_dict(source)
    skipped: List[str] = []
    if exclude_classifier:
        skipped = sorted(k for k in state if k.startswith("classifier."))
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    own = model.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    wrong_dtype = [
        f"{k}: checkpoint {v.dtype} vs model {own[k].dtype}"
        for k, v in state.items()
        if k in own and _dtype_kind(v.dtype) != _dtype_kind(own[k].dtype)
    ]
    if wrong_dtype:
        raise CheckpointError("checkpoint tensors have the wrong kind of dtype (casting would change their "
                              "meaning): " + _first(wrong_dtype))
    if mismatched:
        raise CheckpointError("checkpoint does not fit the model (is it another variant or class count?); "
                              "shape mismatches: " + _first(mismatched))
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not (exclude_classifier and k.startswith("classifier."))]
    out = LoadResult(missing_keys=missing, unexpected_keys=list(result.unexpected_keys), skipped_keys=skipped)
    if strict and (out.missing_keys or out.unexpected_keys):
        raise CheckpointError(
            f"checkpoint keys do not match the model: missing {out.missing_keys[:10]}"
            f"{' ...' if len(out.missing_keys) > 10 else ''} ({len(out.missing_keys)} in all), unexpected "
            f"{out.unexpected_keys[:10]}{' ...' if len(out.unexpected_keys) > 10 else ''} "
            f"({len(out.unexpected_keys)} in all)"
        )
    return out


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def save_weights(model: Union[nn.Module, Mapping[str, torch.Tensor]], path: PathLike,
                 metadata: Optional[Dict[str, str]] = None, config: Optional[Mapping[str, Any]] = None) -> Path:
    """Write weights to ``path`` as ``.safetensors``, atomically.

    ``metadata`` and the model's description ``config`` go into the header (``load_model(path)`` reads it).
    """
    import json

    from safetensors.torch import save_file

    from .fileio import atomic_write_with

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_weights writes .safetensors files; got {path.name!r}")
    if isinstance(model, nn.Module):
        model = unwrap_model(model).state_dict()
    state = {k: v.detach().contiguous().cpu() for k, v in model.items()}
    meta = {"format": "pt", **(metadata or {})}
    if config is not None:
        meta[CONFIG_KEY] = json.dumps(config)
    return atomic_write_with(path, lambda tmp: save_file(state, tmp, metadata=meta))


def safetensors_metadata(path: PathLike) -> Dict[str, str]:
    """The string metadata in a ``.safetensors`` header; empty when the file is missing or not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception:
        return {}
