"""BatchNorm folded into the convolution before it, for inference and deployment.

In eval mode a BatchNorm is an affine map per channel, ``y = (z - mean) / sqrt(var + eps) * gamma +
beta``; applied to a convolution's output ``z = W * s`` it equals one convolution with weight
``W * gamma / sqrt(var + eps)`` and bias ``beta - mean * gamma / sqrt(var + eps)``. Folding removes a
pass over every feature map. The folded arithmetic rounds differently, so a membrane that sits
exactly at the threshold can flip a spike; :func:`count_spike_flips` measures how often.
"""

from __future__ import annotations

import copy
from typing import Dict, Iterable, Tuple

import torch
from torch import nn

from ..fidelity import compare, neuron_outputs
from .layers import SeqBatchNorm2d, SeqConv2d

__all__ = ["fuse_for_inference", "fold_batchnorm", "count_spike_flips"]


def fold_batchnorm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> SeqConv2d:
    """A :class:`SeqConv2d` with bias that computes ``norm(conv(x))`` in eval mode (folded in float64)."""
    scale = norm.weight.detach().double() / torch.sqrt(norm.running_var.double() + norm.eps)
    weight = conv.weight.detach().double() * scale.reshape(-1, 1, 1, 1)
    bias = norm.bias.detach().double() - norm.running_mean.double() * scale
    if conv.bias is not None:
        bias = bias + conv.bias.detach().double() * scale
    fused = SeqConv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=True, padding_mode=conv.padding_mode,
        device=conv.weight.device, dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        fused.weight.copy_(weight.to(conv.weight.dtype))
        fused.bias.copy_(bias.to(conv.weight.dtype))  # type: ignore[union-attr]
    return fused


def _pairs(module: nn.Module) -> Iterable[Tuple[str, str]]:
    """Names of (convolution, BatchNorm) children where the BatchNorm directly follows the convolution."""
    names = [n for n, _ in module.named_children()]
    kids = dict(module.named_children())
    if isinstance(module, nn.Sequential):
        for a, b in zip(names, names[1:]):
            if isinstance(kids[a], nn.Conv2d) and isinstance(kids[b], SeqBatchNorm2d):
                yield a, b
        return
    # blocks that call their layers by name (Downsample: conv -> norm; DSSA: W -> norm, Wproj -> norm_proj)
    for conv_name, norm_name in (("conv", "norm"), ("W", "norm"), ("Wproj", "norm_proj")):
        if isinstance(kids.get(conv_name), nn.Conv2d) and isinstance(kids.get(norm_name), SeqBatchNorm2d):
            yield conv_name, norm_name


def fuse_for_inference(model: nn.Module, inplace: bool = False) -> nn.Module:
    """An eval-mode model with every BatchNorm folded into the convolution before it.

    Returns a copy unless ``inplace``. The result is for inference only: it has no BatchNorm left
    to train, so ``train()`` on it raises.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    for module in list(model.modules()):
        for conv_name, norm_name in list(_pairs(module)):
            conv, norm = getattr(module, conv_name), getattr(module, norm_name).bn
            setattr(module, conv_name, fold_batchnorm(conv, norm))
            setattr(module, norm_name, nn.Identity())
    model.train = _no_training.__get__(model)  # type: ignore[method-assign]
    model.fused_for_inference = True  # type: ignore[assignment]
    return model


def _no_training(self: nn.Module, mode: bool = True) -> nn.Module:
    if mode:
        raise RuntimeError("this model has its BatchNorm folded for inference (fuse_for_inference); "
                           "train the original model instead")
    return nn.Module.train(self, False)


def count_spike_flips(model: nn.Module, fused: nn.Module, x: torch.Tensor) -> Dict[str, float]:
    """How many spikes differ between ``model`` (eval) and its folded copy on input ``x``."""
    (ref_out, ref), (out, got) = neuron_outputs(model.eval(), x), neuron_outputs(fused, x)
    fid = compare(ref_out, out, ref, got)
    return {"flipped": sum(f.flipped for f in fid.layers), "spikes": sum(int(s.sum()) for s in ref.values()),
            "elements": sum(f.elements for f in fid.layers), "flip_rate": fid.flip_rate}
