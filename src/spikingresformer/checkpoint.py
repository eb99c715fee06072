"""Loading official and own checkpoints safely, and writing ``.safetensors`` weights.

Nothing here unpickles code: ``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)``
and anything that needs more than tensors and plain containers is refused.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Union

import torch
from torch import nn

__all__ = ["LoadResult", "CheckpointError", "read_state_dict", "load_checkpoint", "save_weights"]

PathLike = Union[str, os.PathLike]
_CONTAINER_KEYS = ("model", "state_dict", "model_ema")


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not fit the model."""


@dataclass
class LoadResult:
    """What :func:`load_checkpoint` did: keys it could not fill and keys it did not use."""

    missing_keys: List[str] = field(default_factory=list)
    unexpected_keys: List[str] = field(default_factory=list)
    skipped_keys: List[str] = field(default_factory=list)


def _strip_prefixes(state: Dict[str, Any]) -> Dict[str, Any]:
    """Remove the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes."""
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def read_state_dict(source: Union[PathLike, Mapping[str, Any]]) -> Dict[str, torch.Tensor]:
    """Return the model state dict held by ``source``.

    ``source`` is a path to a ``.safetensors`` file or a ``torch.save`` file, or an already loaded
    dict. Training checkpoints (``{'model': state_dict, 'optimizer': ...}``) and raw state dicts are
    both accepted.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path))
        else:
            try:
                data = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e:
                raise CheckpointError(
                    f"refused to load {path}: it holds objects other than tensors and plain containers "
                    f"(loading it would run code from the file). Details: {e}"
                ) from None
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
    return _strip_prefixes(dict(data))


def load_checkpoint(
    model: nn.Module,
    source: Union[PathLike, Mapping[str, Any]],
    *,
    exclude_classifier: bool = False,
    strict: bool = True,
) -> LoadResult:
    """Load ``source`` into ``model`` and report what did not match.

    With ``exclude_classifier=True`` the classifier weights are skipped (transfer learning) and the
    model keeps its own head. With ``strict=True`` any other missing or unexpected key, or a shape
    that does not fit, raises :class:`CheckpointError` naming the keys.
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
    if mismatched:
        raise CheckpointError(
            "checkpoint does not fit the model (is it another variant or class count?); shape mismatches: "
            + "; ".join(mismatched[:10])
            + (f" and {len(mismatched) - 10} more" if len(mismatched) > 10 else "")
        )
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


def save_weights(model: Union[nn.Module, Mapping[str, torch.Tensor]], path: PathLike) -> Path:
    """Write a model's (or a state dict's) weights to ``path`` as ``.safetensors``, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_weights writes .safetensors files; got {path.name!r}")
    if isinstance(model, nn.Module):
        model = getattr(model, "module", model)
        model = getattr(model, "_orig_mod", model)
        model = model.state_dict()
    state = {k: v.detach().contiguous().cpu() for k, v in model.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)
    return path
