"""SpikingResformer (Shi, Hao, Yu, CVPR 2024): blocks, the network and its registered variants.

Layout follows timm's model files: the blocks first (Downsample, DSSA, GWFFN), then the
:class:`SpikingResformer` network, then the small factory functions that timm's registry knows.
Module and parameter names match the official release, so its checkpoints load with
``strict=True``. Tensors inside the network are ``[T, B, C, H, W]`` (time first).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.distributed as dist
import torch.fx
from torch import nn
from torch.utils.checkpoint import checkpoint

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, register_model
from timm.models._features import feature_take_indices

from ..constants import CIFAR10_MEAN, CIFAR10_STD
from ..neurons import MultiStepNeuron, build_neuron
from ..neurons.bits import SpikeBits
from .layers import SeqBatchNorm2d, SeqConv2d, SeqLinear, SeqMaxPool2d, SpikingMatmul

__all__ = ["Downsample", "DSSA", "GWFFN", "SpikingResformer", "UnknownModelError", "VARIANTS", "check_variant"]



def to_channels_last_5d(x: torch.Tensor) -> torch.Tensor:
    """``[T, B, C, H, W]`` stored as ``[T, B, H, W, C]`` (channels innermost); folding T and B stays a view."""
    return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def is_channels_last_5d(x: torch.Tensor) -> bool:
    """True if ``x`` ``[T, B, C, H, W]`` is stored channels-innermost (and ``x.shape[2] > 1``)."""
    return x.dim() == 5 and x.shape[2] > 1 and not x.is_contiguous() and x.permute(0, 1, 3, 4, 2).is_contiguous()


# Layout decisions depend on strides, which FX symbolic tracing cannot see: each one lives in a
# small function that FX records as one call (torch.fx.wrap) and that torch.compile traces through.


def channels_first(y: torch.Tensor) -> torch.Tensor:
    """``y`` in contiguous (channels-first) order, copying only if it is not already."""
    return y if y.is_contiguous() else y.contiguous()


def like_layout(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``out`` stored channels-last if ``ref`` is (keeps a block's output in its input's layout)."""
    return to_channels_last_5d(out) if is_channels_last_5d(ref) else out


def channels_last_grad(x: torch.Tensor) -> torch.Tensor:
    """Identity whose gradient comes back channels-last when ``x`` is channels-last and needs one."""
    return _ChannelsLastGrad.apply(x) if (x.requires_grad and is_channels_last_5d(x)) else x


def check_image_input(x: torch.Tensor, in_chans: int, size_divisor: int, check_finite: bool) -> None:
    """Raise ``ValueError`` unless ``x`` is ``[B, C, H, W]`` or ``[B, T, C, H, W]`` floating point of a valid size.

    With ``check_finite``, NaN or infinite values are rejected too (in eager mode; compiled and
    exported graphs skip that data-dependent check).
    """
    expected = (
        f"[B, {in_chans}, H, W] images or [B, T, {in_chans}, H, W] event frames, "
        f"H and W multiples of {size_divisor}"
    )
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected a tensor of {expected}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(
            f"expected a floating-point tensor (float32, bfloat16, float16 or float64) of {expected}; got "
            f"dtype {x.dtype} (convert images with x.float() and normalise them first)"
        )
    if x.dim() not in (4, 5):
        raise ValueError(f"expected {expected}; got a {x.dim()}-d tensor of shape {tuple(x.shape)}")
    c, h, w = x.shape[-3:]
    if c != in_chans:
        raise ValueError(f"expected {expected}; got {c} channels in shape {tuple(x.shape)}")
    if h % size_divisor or w % size_divisor or h == 0 or w == 0:
        raise ValueError(
            f"expected {expected}; got spatial size {h}x{w} in shape {tuple(x.shape)}, which the "
            f"stages cannot divide evenly"
        )
    if x.dim() == 5 and x.shape[1] < 1:
        raise ValueError(f"expected at least one time step, got shape {tuple(x.shape)}")
    if check_finite and not torch.compiler.is_compiling() and x.numel() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"expected finite input values; got {bad} NaN or infinite value(s) in a tensor of shape "
            f"{tuple(x.shape)} (set model.check_finite_input = False to skip this check)"
        )


def prepare_input(x: torch.Tensor, memory_format: str) -> torch.Tensor:
    """Images ``[B, C, H, W]`` stay 4-d; event frames ``[B, T, C, H, W]`` become ``[T, B, C, H, W]``; layout set."""
    channels_last = use_channels_last(x, memory_format)
    if x.dim() == 5:
        x = x.transpose(0, 1)
        return to_channels_last_5d(x) if channels_last else x
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def repeat_over_time(y: torch.Tensor, steps: int) -> torch.Tensor:
    """A static image's stem output ``[B, C, H, W]`` repeated over ``steps`` (its layout kept); 5-d passes."""
    if y.dim() == 5:
        return y
    if y.shape[1] > 1 and not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last):
        return y.permute(0, 2, 3, 1).unsqueeze(0).expand(steps, -1, -1, -1, -1).contiguous().permute(0, 1, 4, 2, 3)
    return y.unsqueeze(0).expand(steps, *y.shape).contiguous()


def use_channels_last(x: torch.Tensor, memory_format: str) -> bool:
    """Whether feature maps are kept channels-last for input ``x`` under ``memory_format``."""
    if memory_format == "channels_last":
        return True
    if memory_format == "contiguous" or x.device.type != "cpu":
        return False
    # measured on CPU: oneDNN's bfloat16 convolutions are several times faster on channels-last
    # input, while float32 ones are faster on contiguous input
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


for _fn in ("channels_first", "like_layout", "channels_last_grad", "check_image_input", "prepare_input",
            "repeat_over_time"):
    torch.fx.wrap(_fn)


# --------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------


class Downsample(nn.Module):
    """First block of stages 2 and 3: spikes, then a 3x3 stride-2 convolution and BatchNorm."""

    def __init__(self, in_planes: int, out_planes: int, neuron: str = "lif", backend: Optional[str] = None):
        super().__init__()
        self.conv = SeqConv2d(in_planes, out_planes, 3, stride=2, padding=1, bias=False)
        self.norm = SeqBatchNorm2d(out_planes)
        self.activation = build_neuron(neuron, backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(self.activation(x)))


class DSSA(nn.Module):
    """Dual Spike Self-Attention with per-head firing-rate scaling (``docs/numerics.md``).

    Args:
        dim: channels C of input and output.
        num_heads: attention heads h (C must divide by h).
        patch_size: side p of the non-overlapping patches that form the keys/values.
        neuron: neuron kind for the three spiking layers.
        backend: neuron backend (``None`` = automatic).
        momentum: weight of the old rate in the firing-rate moving average.
        sync_rates: under ``torch.distributed``, average the batch firing rates over all ranks before
            they enter the moving average, so every rank holds the same buffers and uses the same
            scales (what one process with the global batch would compute).

    A firing-rate buffer that is still 0 (a fresh model in eval mode, or a head that never fired)
    is read as a rate of 1, so the scales stay finite; the official code divides by zero there.
    """

    #: the firing-rate buffers, in the order of ``rates_seen``
    RATE_NAMES = ("firing_rate_x", "firing_rate_attn")

    def __init__(
        self,
        dim: int,
        num_heads: int,
        patch_size: int,
        neuron: str = "lif",
        backend: Optional[str] = None,
        momentum: float = 0.999,
        sync_rates: bool = True,
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"DSSA dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.momentum = momentum
        self.sync_rates = sync_rates
        self.register_buffer("firing_rate_x", torch.zeros(1, 1, num_heads, 1, 1))
        self.register_buffer("firing_rate_attn", torch.zeros(1, 1, num_heads, 1, 1))
        # Whether each buffer (RATE_NAMES order) has seen a training batch: a tensor, so that compiled
        # graphs read it without recompiling; deliberately not in the state dict (the official
        # release keeps it outside too); run checkpoints store it beside.
        self.register_buffer("rates_seen", torch.zeros(2, dtype=torch.bool), persistent=False)
        self._freeze_rates = False  # set while activation checkpointing recomputes the block

        self.activation_in = build_neuron(neuron, backend)
        self.W = SeqConv2d(dim, dim * 2, patch_size, stride=patch_size, bias=False)
        self.norm = SeqBatchNorm2d(dim * 2)
        self.matmul1 = SpikingMatmul("right")
        self.matmul2 = SpikingMatmul("right")
        self.activation_attn = build_neuron(neuron, backend)
        self.activation_out = build_neuron(neuron, backend)
        self.Wproj = SeqConv2d(dim, dim, 1, bias=False)
        self.norm_proj = SeqBatchNorm2d(dim)

    def _update_rate(self, name: str, spikes: torch.Tensor) -> torch.Tensor:
        """Fold the batch firing rate per head into buffer ``name`` (training only); return the buffer.

        The first training batch of a module sets a buffer that is still all zero to the batch
        rate; every batch then takes a moving average with weight ``momentum`` on the old value.
        """
        buf = getattr(self, name)
        if self.training and not self._freeze_rates:
            rate = spikes.detach().mean((0, 1, 3, 4), keepdim=True, dtype=torch.float32)
            if self.sync_rates and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                rate = rate.clone()
                dist.all_reduce(rate)
                rate = rate / dist.get_world_size()
            i = self.RATE_NAMES.index(name)
            start_fresh = (~self.rates_seen[i]) & (buf == 0).all()
            current = torch.where(start_fresh, rate, buf)
            with torch.no_grad():
                buf.copy_(current * self.momentum + rate * (1 - self.momentum))
                self.rates_seen[i] = True
        return buf

    @staticmethod
    def _scale(rate: torch.Tensor, size: float) -> torch.Tensor:
        """``1/sqrt(rate * size)`` with a rate of 0 read as 1 (finite for untrained buffers)."""
        safe = torch.where(rate > 0, rate, torch.ones_like(rate))
        return 1.0 / torch.sqrt(safe * size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, b, c, h, w = x.shape
        heads = self.num_heads
        s = self.activation_in(x)  # S = SN(X)
        # Y = BN(W(S)), split per head into the keys Y1 and values Y2. The attention reads Y in
        # channels-first order: reorder before BatchNorm, not after, so that BatchNorm's backward
        # sees input and gradient in one layout (mixed is ~10x slower)
        y = self.norm(channels_first(self.W(s)))
        num_patches = y.shape[-2] * y.shape[-1]
        y = y.reshape(t, b, heads, 2 * c // heads, num_patches)
        y1, y2 = y[:, :, :, : c // heads, :], y[:, :, :, c // heads :, :]
        s = s.reshape(t, b, heads, c // heads, h * w)

        # A = SN(c1 * Y1^T S), c1 = 1/sqrt(rate(S) * C/h)
        scale1 = self._scale(self._update_rate("firing_rate_x", s), c // heads)
        attn = self.activation_attn(self.matmul1(y1.transpose(-1, -2), s) * scale1)
        # O = SN(c2 * Y2 A), c2 = 1/sqrt(rate(A) * patches); DSSA(X) = BN(Wproj(O)) + X
        scale2 = self._scale(self._update_rate("firing_rate_attn", attn), num_patches)
        out = like_layout((self.matmul2(y2, attn) * scale2).reshape(t, b, c, h, w), x)
        out = self.activation_out(out)
        return self.norm_proj(self.Wproj(out)) + x


class GWFFN(nn.Module):
    """Group-wise feed-forward block: 1x1 up (x ratio), grouped 3x3 with a residual, 1x1 down."""

    def __init__(
        self,
        dim: int,
        ratio: int = 4,
        group_size: int = 64,
        num_conv: int = 1,
        neuron: str = "lif",
        backend: Optional[str] = None,
    ):
        super().__init__()
        inner = dim * ratio
        if inner % group_size != 0:
            raise ValueError(f"GWFFN inner width {inner} must be divisible by group_size {group_size}")
        self.up = nn.Sequential(
            build_neuron(neuron, backend), SeqConv2d(dim, inner, 1, bias=False),
            SeqBatchNorm2d(inner),
        )
        self.conv = nn.ModuleList(
            nn.Sequential(
                build_neuron(neuron, backend),
                SeqConv2d(inner, inner, 3, padding=1, groups=inner // group_size, bias=False),
                SeqBatchNorm2d(inner),
            )
            for _ in range(num_conv)
        )
        self.down = nn.Sequential(
            build_neuron(neuron, backend), SeqConv2d(inner, dim, 1, bias=False),
            SeqBatchNorm2d(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # U = BN(W_up SN(X)); Z = BN(GWConv(SN(U))) (x num_conv); GWFFN(X) = BN(W_down SN(Z + U)) + X
        u = self.up(x)
        z = u
        for m in self.conv:
            z = m(z)
        return self.down(z + u) + x


# --------------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------------


class SpikingResformer(nn.Module):
    """Multi-stage spiking network of DSSA and GWFFN blocks with a ResNet-like stem.

    Args:
        layers: per stage, the block layout; each entry is a list of block names
            (``"DSSA"``, ``"GWFFN"``) repeated ``depths[i]`` times.
        planes: channels of each stage.
        num_heads: DSSA heads of each stage.
        patch_sizes: DSSA patch size of each stage.
        depths: how many times each stage repeats its layout.
        img_size: construction-time input side (metadata; the network runs at any valid size).
        T: simulation steps for static images (event input brings its own).
        in_chans: input channels.
        num_classes: classifier outputs (0 for no classifier).
        prologue: ``"imagenet"`` (7x7/2 conv, BN, 3x3/2 max-pool) or ``"cifar"`` (3x3/1 conv, BN).
        group_size: channels per group in the GWFFN grouped convolution.
        neuron: ``"lif"``, ``"plif"`` or ``"if"``.
        neuron_backend: force a neuron backend (``None`` = automatic, see ``neurons.backends``).
        ffn_ratio: GWFFN expansion ratio.
        sync_firing_rates: average DSSA firing rates over ranks under ``torch.distributed``.
        global_pool: ``"avg"`` (global average pooling before the classifier) or ``""`` (none).
        save_spikes_as_bits: keep the spikes that autograd saves for backward at one bit per element
            (on by default: identical gradients, 29-32 % less saved for backward at the same step time
            as measured in docs/performance.md; :meth:`set_spike_saving` switches it).
        memory_format: layout of the feature maps: ``"contiguous"``, ``"channels_last"`` (time and
            batch outermost, channels innermost) or ``"auto"`` (channels-last under CPU bfloat16
            autocast, where it is faster). Results are the same up to floating-point rounding.

    ``forward`` takes ``[B, C, H, W]`` images (repeated over T) or ``[B, T, C, H, W]`` event frames
    and returns logits ``[B, num_classes]`` averaged over time; :meth:`forward_steps` returns the
    per-step logits ``[T, B, num_classes]``.
    """

    def __init__(
        self,
        layers: Sequence[Sequence[str]] = (("DSSA", "GWFFN"),) * 3,
        planes: Sequence[int] = (64, 192, 384),
        num_heads: Sequence[int] = (1, 3, 6),
        patch_sizes: Sequence[int] = (4, 2, 1),
        depths: Sequence[int] = (1, 2, 3),
        img_size: int = 224,
        T: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        prologue: str = "imagenet",
        group_size: int = 64,
        neuron: str = "lif",
        neuron_backend: Optional[str] = None,
        ffn_ratio: int = 4,
        sync_firing_rates: bool = True,
        memory_format: str = "auto",
        global_pool: str = "avg",
        save_spikes_as_bits: bool = True,
        **kwargs: Any,
    ):
        super().__init__()
        kwargs.pop("pretrained_cfg", None)
        kwargs.pop("pretrained_cfg_overlay", None)
        if kwargs:
            raise TypeError(f"SpikingResformer got unexpected arguments: {sorted(kwargs)}")
        n = len(planes)
        if not (len(layers) == len(num_heads) == len(patch_sizes) == len(depths) == n):
            raise ValueError(
                "layers, planes, num_heads, patch_sizes and depths need one entry per stage; got lengths "
                f"{len(layers)}, {n}, {len(num_heads)}, {len(patch_sizes)}, {len(depths)}"
            )
        if T < 1:
            raise ValueError(f"T must be at least 1, got {T}")
        if memory_format not in ("auto", "contiguous", "channels_last"):
            raise ValueError(f"memory_format must be auto, contiguous or channels_last, got {memory_format!r}")
        self.memory_format = memory_format
        if prologue not in ("imagenet", "cifar"):
            raise ValueError(f"prologue must be 'imagenet' or 'cifar', got {prologue!r}")
        self.T = T
        self.img_size = img_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = planes[-1]
        self.neuron = neuron
        self.grad_checkpointing = False
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")
        self.global_pool = global_pool
        #: reject NaN/inf input in eager mode (a data-dependent check: compiled graphs skip it)
        self.check_finite_input = True
        self.stem_stride = 4 if prologue == "imagenet" else 1

        if prologue == "imagenet":
            self.prologue = nn.Sequential(
                SeqConv2d(in_chans, planes[0], 7, stride=2, padding=3, bias=False),
                SeqBatchNorm2d(planes[0]),
                SeqMaxPool2d(kernel_size=3, stride=2, padding=1),
            )
        else:
            self.prologue = nn.Sequential(
                SeqConv2d(in_chans, planes[0], 3, stride=1, padding=1, bias=False),
                SeqBatchNorm2d(planes[0]),
            )

        stages: List[nn.Module] = []
        self.feature_info: List[Dict[str, Any]] = []
        self.size_divisor = 1
        for i in range(n):
            blocks: List[nn.Module] = []
            if i > 0:
                blocks.append(Downsample(planes[i - 1], planes[i], neuron, neuron_backend))
            for _ in range(depths[i]):
                for name in layers[i]:
                    if name == "DSSA":
                        blocks.append(
                            DSSA(planes[i], num_heads[i], patch_sizes[i], neuron, neuron_backend,
                                 sync_rates=sync_firing_rates)
                        )
                    elif name == "GWFFN":
                        blocks.append(GWFFN(planes[i], ffn_ratio, group_size, neuron=neuron, backend=neuron_backend))
                    else:
                        raise ValueError(f"unknown block {name!r} in stage {i}; expected 'DSSA' or 'GWFFN'")
            stages.append(nn.Sequential(*blocks))
            reduction = self.stem_stride * 2**i
            self.size_divisor = math.lcm(self.size_divisor, reduction * patch_sizes[i])
            self.feature_info.append(dict(num_chs=planes[i], reduction=reduction, module=f"layers.{i}"))
        self.layers = nn.Sequential(*stages)
        self.classifier: nn.Module = SeqLinear(planes[-1], num_classes, bias=False) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        self.set_spike_saving(save_spikes_as_bits)

    def set_spike_saving(self, as_bits: bool = True) -> None:
        """Keep the spikes saved for backward as bits (``True``) or in their dtype, as autograd would."""
        self.save_spikes_as_bits = bool(as_bits)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # -- timm interface -------------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Parameter names that take no weight decay: every PLIF ``w``."""
        return {n for n, p in self.named_parameters() if n.endswith(".w") and p.ndim == 0}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups for layer-wise learning-rate decay (timm convention)."""
        return dict(stem=r"^prologue", blocks=r"^layers\.(\d+)" if coarse else r"^layers\.(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """The lean mode: each block keeps only its input for backward and runs again there
        (activation checkpointing); identical results and statistics, less memory, a slower step."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs (0 removes it).

        ``global_pool=""`` also removes the pooling (with no classifier, ``forward`` then returns
        the time-averaged feature map ``[B, C, H, W]``); ``"avg"`` restores it.
        """
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        ref = next(self.parameters())
        self.classifier = (
            SeqLinear(self.num_features, num_classes, bias=False, device=ref.device, dtype=ref.dtype)
            if num_classes > 0
            else nn.Identity()
        )
        if num_classes > 0:
            trunc_normal_(self.classifier.weight, std=0.02)

    # -- input handling -------------------------------------------------------------------------

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is a valid floating-point ``[B, C, H, W]`` or ``[B, T, C, H, W]``."""
        check_image_input(x, self.in_chans, self.size_divisor, self.check_finite_input)

    def use_channels_last(self, x: torch.Tensor) -> bool:
        """Whether feature maps are kept channels-last for this input (see ``memory_format``)."""
        return use_channels_last(x, self.memory_format)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        """Input -> ``[T, B, C, H, W]`` after the prologue.

        A static image is the same at every step, so the stem convolution runs once and its output
        is repeated over T (the official code repeats the image first; the result is the same).
        """
        check_image_input(x, self.in_chans, self.size_divisor, self.check_finite_input)
        y = repeat_over_time(self.prologue[0](prepare_input(x, self.memory_format)), self.T)
        for m in self.prologue[1:]:
            y = m(y)
        return y

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            # compiled graphs recompute only pure operators (the buffer updates are not replayed)
            run = block if torch.compiler.is_compiling() else _RecomputeOnce(block)
            return checkpoint(run, x, use_reentrant=False)
        return block(x)

    def _saving(self) -> Any:
        """The context that keeps saved spikes as bits, when that is on and a backward can follow."""
        lean = self.grad_checkpointing and self.training  # recomputed spikes are never saved
        if self.save_spikes_as_bits and not lean and torch.is_grad_enabled() and not torch.compiler.is_compiling():
            return SpikeBits()
        return nullcontext()

    # -- forward --------------------------------------------------------------------------------

    def forward_features_steps(self, x: torch.Tensor) -> torch.Tensor:
        """Input -> last stage's output per step ``[T, B, C, H', W']`` (real-valued)."""
        return self.forward_intermediates(x, indices=1, output_fmt="TNCHW")[0]  # collects no earlier stage

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Input -> last stage's output averaged over time, ``[B, C, H', W']`` (timm's convention).

        The mean over time of the last feature map is what the linear head sees: pooling and the
        classifier are linear, so ``forward_head(forward_features(x))`` equals ``forward(x)`` up to
        floating-point rounding (``forward`` averages the per-step logits, as the official code does).
        """
        return self.forward_features_steps(x).mean(0)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Features -> logits ``[B, num_classes]`` (or pooled features with ``pre_logits``).

        Takes ``[B, C, H, W]`` (``forward_features``) or per-step ``[T, B, C, H, W]``
        (``forward_features_steps``, averaged over T after the classifier, as ``forward`` does).
        """
        if x.dim() == 5:
            return self._head_steps(x, pre_logits).mean(0)
        x = x.mean((-2, -1)) if self.global_pool == "avg" else x
        return x if pre_logits else self.classifier(x)

    def _head_steps(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = channels_last_grad(x).mean((-2, -1))  # global average pool: [T, B, C]
        return x if pre_logits else self.classifier(x)

    def forward_steps(self, x: torch.Tensor) -> torch.Tensor:
        """Per-step logits ``[T, B, num_classes]`` (what TET training needs)."""
        return self._head_steps(self.forward_features_steps(x))

    def forward(self, x: torch.Tensor, return_steps: bool = False) -> torch.Tensor:
        """Logits ``[B, num_classes]`` averaged over time; per-step ``[T, B, num_classes]`` with ``return_steps``.

        With ``global_pool=""`` and no classifier, the time-averaged feature map ``[B, C, H, W]``.
        """
        # ``is True`` rather than truthiness: under FX symbolic tracing the argument is a Proxy
        # (which has no truth value), and tracing then takes the default, averaged output
        per_step = return_steps is True
        if self.global_pool == "" and self.num_classes == 0 and not per_step:
            return self.forward_features(x)
        steps = self.forward_steps(x)
        return steps if per_step else steps.mean(0)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs (timm's feature API): ``(final features, [stage outputs])``.

        ``output_fmt="NCHW"`` averages each stage output over time (``[B, C, H, W]``; the final
        features equal :meth:`forward_features`); ``"TNCHW"`` keeps the time axis
        (``[T, B, C, H, W]``, the final features as :meth:`forward_features_steps`).
        """
        if output_fmt not in ("NCHW", "TNCHW"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'TNCHW', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.layers), indices)
        intermediates = []
        stages = self.layers if not stop_early else self.layers[: max_index + 1]
        with self._saving():
            x = self._stem(x)
            for i, stage in enumerate(stages):
                for block in stage:
                    x = self._run_block(block, x)
                if i in take:
                    intermediates.append(x.mean(0) if output_fmt == "NCHW" else x)
        if intermediates_only:
            return intermediates
        return (x.mean(0) if output_fmt == "NCHW" else x), intermediates

    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        """Drop the stages after the last wanted one (and the head); return the absolute indices."""
        take, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[: max_index + 1]
        if prune_head:
            self.reset_classifier(0)
        return take


class _ChannelsLastGrad(torch.autograd.Function):
    """Identity whose backward returns the gradient channels-last.

    The pooling gradient arrives channels-first and would flow through every residual connection,
    so each BatchNorm would see a channels-last input with a channels-first gradient (slow).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return to_channels_last_5d(grad)


class _RecomputeOnce:
    """Runs a block under activation checkpointing without updating its statistics twice.

    The first call is the real forward. In the second (the recomputation in backward) each BatchNorm
    runs with momentum 0 and without counting the batch, so its running statistics stay exactly as
    the forward left them (``1 * r + 0 * batch``), and the DSSA firing-rate buffers are read without
    an update. Only Python attributes change, no tensor is copied.
    """

    def __init__(self, block: nn.Module):
        self.block, self.calls = block, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            return self.block(x)
        norms = [m for m in self.block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        dssas = [m for m in self.block.modules() if isinstance(m, DSSA)]
        kept = [(m.momentum, m.num_batches_tracked) for m in norms]
        for m in norms:
            m.momentum, m.num_batches_tracked = 0.0, None
        for m in dssas:
            m._freeze_rates = True
        try:
            return self.block(x)
        finally:
            for m, (momentum, count) in zip(norms, kept):
                m.momentum, m.num_batches_tracked = momentum, count
            for m in dssas:
                m._freeze_rates = False


# --------------------------------------------------------------------------------------------------
# Registered variants
# --------------------------------------------------------------------------------------------------


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    cfg = dict(
        url="",
        num_classes=1000,
        input_size=(3, 224, 224),
        pool_size=(14, 14),
        crop_pct=0.95,
        interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="prologue.0",
        classifier="classifier",
        license="mit",
        paper_ids="arXiv:2403.14302",
    )
    cfg.update(kwargs)
    return cfg


#: Constructor arguments of the six published variants (the paper's Table 1 and the official configs).
VARIANTS: Dict[str, Dict[str, Any]] = {
    "spikingresformer_ti": dict(planes=(64, 192, 384), num_heads=(1, 3, 6), prologue="imagenet"),
    "spikingresformer_s": dict(planes=(64, 256, 512), num_heads=(1, 4, 8), prologue="imagenet"),
    "spikingresformer_m": dict(planes=(64, 384, 768), num_heads=(1, 6, 12), prologue="imagenet"),
    "spikingresformer_l": dict(planes=(128, 512, 1024), num_heads=(2, 8, 16), prologue="imagenet"),
    "spikingresformer_cifar": dict(
        planes=(64, 192, 384), num_heads=(1, 3, 6), prologue="cifar", img_size=32, num_classes=10
    ),
    "spikingresformer_dvsg": dict(
        planes=(32, 96, 192), num_heads=(1, 3, 6), prologue="cifar", group_size=32, neuron="plif",
        img_size=64, num_classes=11, T=16,
    ),
}

class UnknownModelError(ValueError):
    """A model name that is not one of the registered variants."""


def check_variant(name: str) -> None:
    """Raise :class:`UnknownModelError` unless ``name`` is a registered variant."""
    if name not in VARIANTS:
        raise UnknownModelError(f"unknown model {name!r}; expected one of {sorted(VARIANTS)}")


#: Variants trained on event-camera frames ``[B, T, C, H, W]`` rather than images.
EVENT_VARIANTS = frozenset({"spikingresformer_dvsg"})

#: Simulation steps of each variant's published recipe (ImageNet/CIFAR: 4; DVS128 Gesture: 16).
DEFAULT_T: Dict[str, int] = {name: int(args.get("T", 4)) for name, args in VARIANTS.items()}

default_cfgs = {
    "spikingresformer_ti": _cfg(),
    "spikingresformer_s": _cfg(),
    "spikingresformer_m": _cfg(),
    "spikingresformer_l": _cfg(),
    "spikingresformer_cifar": _cfg(
        num_classes=10, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0, mean=CIFAR10_MEAN, std=CIFAR10_STD
    ),
    "spikingresformer_dvsg": _cfg(
        num_classes=11, input_size=(3, 64, 64), pool_size=(16, 16), crop_pct=1.0, mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0), interpolation="bilinear",
    ),
}


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> SpikingResformer:
    args = dict(VARIANTS[variant])
    args.update(kwargs)
    model = build_model_with_cfg(
        SpikingResformer,
        variant,
        pretrained,
        feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2)),
        **args,
    )
    # timm's PretrainedCfg has no field for the number of time steps; add it to the resolved dict.
    model.pretrained_cfg = dict(
        model.pretrained_cfg, T=DEFAULT_T[variant], input_kind="events" if variant in EVENT_VARIANTS else "images"
    )
    model.default_cfg = model.pretrained_cfg
    return model


@register_model
def spikingresformer_ti(pretrained: bool = False, **kwargs: Any) -> SpikingResformer:
    """SpikingResformer-Ti: planes 64/192/384, ImageNet stem (11.14 M parameters without BN)."""
    return _create("spikingresformer_ti", pretrained, **kwargs)


@register_model
def spikingresformer_s(pretrained: bool = False, **kwargs: Any) -> SpikingResformer:
    """SpikingResformer-S: planes 64/256/512, ImageNet stem (17.76 M)."""
    return _create("spikingresformer_s", pretrained, **kwargs)


@register_model
def spikingresformer_m(pretrained: bool = False, **kwargs: Any) -> SpikingResformer:
    """SpikingResformer-M: planes 64/384/768, ImageNet stem (35.52 M)."""
    return _create("spikingresformer_m", pretrained, **kwargs)


@register_model
def spikingresformer_l(pretrained: bool = False, **kwargs: Any) -> SpikingResformer:
    """SpikingResformer-L: planes 128/512/1024, ImageNet stem (60.27 M)."""
    return _create("spikingresformer_l", pretrained, **kwargs)


@register_model
def spikingresformer_cifar(pretrained: bool = False, **kwargs: Any) -> SpikingResformer:
    """SpikingResformer for CIFAR: Ti widths with the 3x3 stride-1 stem, 10 classes at 32 px."""
    return _create("spikingresformer_cifar", pretrained, **kwargs)


@register_model
def spikingresformer_dvsg(pretrained: bool = False, **kwargs: Any) -> SpikingResformer:
    """SpikingResformer for DVS128 Gesture: planes 32/96/192, PLIF neurons, 11 classes at 64 px."""
    return _create("spikingresformer_dvsg", pretrained, **kwargs)
