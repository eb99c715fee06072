"""SpikingResformer: a spiking vision transformer with Dual Spike Self-Attention (CVPR 2024).

Importing the package registers the six published variants with timm, so
``timm.create_model("spikingresformer_ti")`` and :func:`create_model` are the same call.
"""

from __future__ import annotations

from typing import Any

import timm
from torch import nn

from .checkpoint import CheckpointError, LoadResult, load_checkpoint, read_state_dict, save_weights
from .hub import load_model, save_pretrained
from .model import VARIANTS, SpikingResformer, fuse_for_inference
from .model.spikingresformer import check_variant

__version__ = "0.1.0"

__all__ = ["CheckpointError", "LoadResult", "SpikingResformer", "VARIANTS", "create_model", "fuse_for_inference",
           "list_models", "load_checkpoint", "load_model", "read_state_dict", "save_pretrained", "save_weights",
           "__version__"]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered variant by name; the same call as ``timm.create_model(name, **kwargs)``."""
    check_variant(name)
    return timm.create_model(name, **kwargs)


def list_models() -> list[str]:
    """Names of the registered SpikingResformer variants."""
    return sorted(VARIANTS)
