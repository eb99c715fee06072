"""The SpikingResformer network, its blocks, multi-step layers and registered variants."""

from .layers import SeqBatchNorm2d, SeqConv2d, SeqLinear, SeqMaxPool2d, SpikingMatmul
from .fuse import count_spike_flips, fuse_for_inference
from .spikingresformer import DSSA, GWFFN, VARIANTS, Downsample, SpikingResformer, default_cfgs

__all__ = ["DSSA", "GWFFN", "VARIANTS", "Downsample", "SeqBatchNorm2d", "SeqConv2d", "SeqLinear",
           "SeqMaxPool2d", "SpikingMatmul", "SpikingResformer", "count_spike_flips", "default_cfgs",
           "fuse_for_inference"]
