"""Operation and spike counting with read-only forward hooks (conventions, spike test: ``docs/energy.md``)."""

from __future__ import annotations

import itertools
import math
import weakref
from contextlib import contextmanager
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..model.layers import SpikingMatmul
from ..neurons import MultiStepNeuron
from .report import E_AC_PJ, E_MAC_PJ, EnergyReport, LayerRecord, NeuronRecord

__all__ = ["EnergyMeter", "analyze", "stage_of", "official_param_count"]

Batch = Union[torch.Tensor, Tuple[Any, ...], List[Any], Dict[str, Any]]


def stage_of(name: str) -> str:
    """Stage label of an official module name: ``prologue``, ``stage1``..``stageN`` or ``head``."""
    parts = name.split(".")
    if parts[0] == "layers" and len(parts) > 1 and parts[1].isdigit():
        return f"stage{int(parts[1]) + 1}"
    if parts[0] == "prologue":
        return "prologue"
    if parts[0] in ("classifier", "head", "fc"):
        return "head"
    return parts[0] or "model"


def official_param_count(model: nn.Module) -> Tuple[int, int]:
    """``(params, params_without_bn)``: conv, linear and BatchNorm parameters (not PLIF's ``w``), as the official
    thop-based tool counts them."""
    def count(*kinds: type) -> int:
        return sum(p.numel() for m in model.modules() if isinstance(m, kinds)
                   for p in m.parameters(recurse=False))

    no_bn = count(nn.Conv2d, nn.Linear)
    return no_bn + count(nn.modules.batchnorm._BatchNorm), no_bn


def _root(t: torch.Tensor) -> torch.Tensor:
    """The tensor that owns ``t``'s memory (``t`` itself unless it is a view)."""
    return t if t._base is None else t._base


class _LayerAcc:
    """Running sums for one counted layer (device tensors, so counting adds no host syncs)."""

    def __init__(self, name: str, kind: str, module: nn.Module) -> None:
        self.name = name
        self.kind = kind
        self.module = module
        self.dense_macs = 0  # MACs summed over images and steps (python int, exact)
        self.sops: Optional[torch.Tensor] = None  # float64 scalar: triggered additions, all images/steps
        self.nonzero: Optional[torch.Tensor] = None  # non-zero input entries (spike operand)
        self.numel = 0  # input entries (spike operand), summed like ``nonzero``
        self.binary: Optional[torch.Tensor] = None  # bool scalar: every input value was 0 or 1
        self.after_neuron = True
        self.input_shape: Tuple[int, ...] = ()
        self.outputs = 0  # output entries summed like ``numel`` (per counted step)
        self.computed = 0  # samples (image-steps) this layer actually computed
        self.weight_elements = 0  # parameters (conv, linear) or real operand per sample (matmul)
        self.value_sops: Optional[torch.Tensor] = None  # value-weighted additions (non-negative input)
        self.negative = False  # some input value was negative: no value-weighted count
        self.integer = True  # every input value was a whole number (event counts, spikes)
        self.adds_bias = False  # own bias, or a BatchNorm reads this layer's output (it folds into a bias)


class _NeuronAcc:
    """Running sums for one neuron layer."""

    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.kind = kind
        self.spikes: Optional[torch.Tensor] = None
        self.numel = 0


def _plus(total: Optional[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``total + x``, where ``None`` is an empty sum."""
    return x if total is None else total + x


class EnergyMeter:
    """Counts MACs, SOPs, BatchNorm elements and spikes of every forward call while attached.

    A context manager; each model call is one batch of ``[B, C, H, W]`` images (repeated over ``T``
    steps, ``T`` from ``model.T`` unless given) or ``[B, T, C, H, W]`` event frames.
    """

    def __init__(self, model: nn.Module, *, T: Optional[int] = None, e_mac_pj: float = E_MAC_PJ,
                 e_ac_pj: float = E_AC_PJ, model_name: Optional[str] = None) -> None:
        self.model = model
        self.T_override = T
        self.e_mac_pj = float(e_mac_pj)
        self.e_ac_pj = float(e_ac_pj)
        self.model_name = model_name or getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
        self._handles: List[Any] = []
        self._layers: Dict[str, _LayerAcc] = {}
        self._neurons: Dict[str, _NeuronAcc] = {}
        self._bn_ops = self._images = self._image_steps = 0
        self._Ts: set[int] = set()
        self._input_shape: Tuple[int, ...] = ()
        self._event_input = False
        self._device = "cpu"
        # per-call state
        self._B = self._T = 0
        self._spike_roots: Dict[int, weakref.ReferenceType] = {}
        self._layer_outputs: Dict[int, Tuple[weakref.ReferenceType, str]] = {}
        self._last_layer: Optional[Tuple[str, Tuple[int, ...]]] = None  # last counted layer, its sample shape

    def __enter__(self) -> "EnergyMeter":
        self.attach()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    def attach(self) -> None:
        """Register the hooks (idempotent)."""
        if self._handles:
            return
        self._handles.append(self.model.register_forward_pre_hook(self._on_model_input))
        self._handles.append(self.model.register_forward_hook(self._on_model_output))
        for name, m in self.model.named_modules():
            if isinstance(m, MultiStepNeuron):
                self._handles.append(m.register_forward_hook(self._neuron_hook(name)))
            elif isinstance(m, nn.Conv2d):
                self._handles.append(m.register_forward_hook(self._layer_hook(name, "conv", self._count_conv)))
            elif isinstance(m, nn.Linear):
                self._handles.append(m.register_forward_hook(self._layer_hook(name, "linear", self._count_linear)))
            elif isinstance(m, SpikingMatmul):
                self._handles.append(m.register_forward_hook(self._layer_hook(name, "matmul", self._count_matmul)))
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                self._handles.append(m.register_forward_hook(self._bn_hook))

    def detach(self) -> None:
        """Remove every hook this meter registered."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._spike_roots.clear()
        self._layer_outputs.clear()

    def _on_model_input(self, module: nn.Module, args: Tuple[Any, ...]) -> None:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.dim() not in (4, 5):
            raise ValueError("EnergyMeter expects the model to be called on [B, C, H, W] or [B, T, C, H, W] tensors")
        self._B = int(x.shape[0])
        if x.dim() == 5:
            self._T = int(x.shape[1])
            self._event_input = True
        else:
            t = self.T_override if self.T_override is not None else getattr(self.model, "T", None)
            if t is None:
                raise ValueError("static-image input needs T: pass EnergyMeter(model, T=...) or give the model a .T")
            self._T = int(t)
        self._input_shape = tuple(int(s) for s in x.shape)
        self._device = str(x.device)
        self._spike_roots.clear()
        self._layer_outputs.clear()

    def _on_model_output(self, module: nn.Module, args: Tuple[Any, ...], out: Any) -> None:
        self._images += self._B
        self._image_steps += self._B * self._T
        self._Ts.add(self._T)
        self._spike_roots.clear()
        self._layer_outputs.clear()

    def _repeat(self, samples: int, name: str) -> int:
        """How many of the T steps one call's samples stand for (T for a once-per-image stem, else 1)."""
        B, T = self._B, self._T
        if B == 0:
            raise RuntimeError("EnergyMeter saw a layer call outside a model forward")
        if samples == B * T:
            return 1
        if samples == B:
            return T
        raise ValueError(
            f"layer {name!r}: {samples} samples in one call fit neither B*T={B * T} nor B={B}; "
            "the meter expects [T, B, ...] (or [B, ...] for a stem run once per image)"
        )

    def _is_spike_source(self, t: torch.Tensor) -> bool:
        ref = self._spike_roots.get(id(_root(t)))
        return ref is not None and ref() is _root(t)

    def _neuron_hook(self, name: str):
        def hook(module: nn.Module, args: Tuple[Any, ...], out: torch.Tensor) -> None:
            with torch.no_grad():
                acc = self._neurons.get(name)
                if acc is None:
                    acc = self._neurons[name] = _NeuronAcc(name, getattr(module, "kind", "") or type(module).__name__)
                acc.spikes = _plus(acc.spikes, torch.count_nonzero(out.detach()).double())  # 0/1 outputs
                acc.numel += out.numel()
                root = _root(out)
                self._spike_roots[id(root)] = weakref.ref(root)
                self._last_layer = None

        return hook

    def _bn_hook(self, module: nn.Module, args: Tuple[Any, ...], out: torch.Tensor) -> None:
        samples = int(out.shape[0]) if out.dim() == 4 else int(out.shape[0] * out.shape[1])
        per_element = 4 if getattr(module, "affine", True) else 2
        self._bn_ops += per_element * out.numel() * self._repeat(samples, "BatchNorm")
        x = args[0] if args else None
        if isinstance(x, torch.Tensor):
            entry = self._layer_outputs.get(id(_root(x)))
            name = entry[1] if entry is not None and entry[0]() is _root(x) else None
            if name is None and self._last_layer is not None and self._last_layer[1] == tuple(x.shape[-3:]):
                name = self._last_layer[0]  # e.g. a static-image stem's output, repeated over T first
            if name in self._layers:
                self._layers[name].adds_bias = True
        self._last_layer = None

    def _layer_hook(self, name: str, kind: str, counter):
        def hook(module: nn.Module, args: Tuple[Any, ...], out: torch.Tensor) -> None:
            with torch.no_grad():
                acc = self._layers.get(name)
                if acc is None:
                    acc = self._layers[name] = _LayerAcc(name, kind, module)
                counter(acc, module, args, out)
                if getattr(module, "bias", None) is not None:
                    acc.adds_bias = True
                if isinstance(out, torch.Tensor):
                    root = _root(out)
                    self._layer_outputs[id(root)] = (weakref.ref(root), name)
                    self._last_layer = (name, tuple(out.shape[-3:]))

        return hook

    @staticmethod
    def _stats(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(non-zero entries as float64, whether every value is 0 or 1)`` of ``x``."""
        x = x.detach()
        nonzero = torch.count_nonzero(x)
        return nonzero.double(), torch.count_nonzero(x.eq(1)) == nonzero

    def _add_input(self, acc: _LayerAcc, x: torch.Tensor, sops_one_pass: torch.Tensor, repeat: int,
                   nonzero: torch.Tensor, binary: torch.Tensor, out: torch.Tensor, samples: int,
                   value_sops: Optional[torch.Tensor] = None) -> None:
        """Fold one call's spike-operand statistics (and its output size) into ``acc``."""
        acc.after_neuron = acc.after_neuron and self._is_spike_source(x)
        acc.input_shape = tuple(int(s) for s in x.shape)
        acc.sops = _plus(acc.sops, sops_one_pass * repeat)
        acc.nonzero = _plus(acc.nonzero, nonzero * repeat)
        acc.numel += x.numel() * repeat
        acc.binary = binary if acc.binary is None else acc.binary & binary
        acc.outputs += out.numel() * repeat
        acc.computed += samples
        if value_sops is None:
            acc.negative = True
        else:
            acc.value_sops = _plus(acc.value_sops, value_sops * repeat)

    def _count_conv(self, acc: _LayerAcc, m: nn.Conv2d, args: Tuple[Any, ...], out: torch.Tensor) -> None:
        x = args[0]
        x4 = x.reshape(-1, *x.shape[-3:])  # [T*B | B | 1, C, H, W]
        samples = int(x4.shape[0])
        repeat = self._repeat(samples, acc.name)
        kh, kw = m.kernel_size
        acc.dense_macs += out.numel() * (m.in_channels // m.groups) * kh * kw * repeat
        # sum(conv2d(s, ones_like(W))) = (out_channels / groups) * sum(conv2d(sum_c s, ones(1, 1, kh, kw)))
        # non-zero inputs per position (exact in float32: at most in_channels), then float64
        nonzero, binary = self._stats(x4)
        xd = x4.detach()
        acc.weight_elements = int(m.weight.numel())
        is_binary = bool(binary)
        if is_binary and xd.dtype == torch.float32:
            counts = xd.sum(dim=1, keepdim=True)
        else:
            counts = xd.ne(0).sum(dim=1, keepdim=True, dtype=torch.float32)
        sops = self._reach(counts.double(), m) * (m.out_channels // m.groups)
        value_sops: Optional[torch.Tensor] = sops
        if not is_binary:
            # value-weighted: an input entry of value c stands for c events, each fanning out
            value_sops = None
            acc.integer = acc.integer and bool(torch.equal(xd, xd.round()))
            if not bool((xd < 0).any()):
                mass = xd.double().sum(dim=1, keepdim=True)
                value_sops = self._reach(mass, m) * (m.out_channels // m.groups)
        self._add_input(acc, x, sops, repeat, nonzero, binary, out, samples, value_sops)

    @staticmethod
    def _reach(counts: torch.Tensor, m: nn.Conv2d) -> torch.Tensor:
        """``sum(conv2d(counts, ones))`` over one input channel with ``m``'s geometry (float64)."""
        kh, kw = m.kernel_size
        padding: Any = m.padding
        if m.padding_mode != "zeros":
            counts = F.pad(counts, m._reversed_padding_repeated_twice, mode=m.padding_mode)
            padding = 0
        ones = torch.ones(1, 1, kh, kw, dtype=torch.float64, device=counts.device)
        return F.conv2d(counts, ones, stride=m.stride, padding=padding, dilation=m.dilation).sum()

    def _count_linear(self, acc: _LayerAcc, m: nn.Linear, args: Tuple[Any, ...], out: torch.Tensor) -> None:
        x = args[0]
        samples = math.prod(int(s) for s in x.shape[:-1])
        repeat = self._repeat(samples, acc.name)
        acc.dense_macs += out.numel() * m.in_features * repeat
        acc.weight_elements = int(m.weight.numel())
        nonzero, binary = self._stats(x)
        xd = x.detach()
        value_sops = None if bool((xd < 0).any()) else xd.double().sum() * m.out_features
        if not bool(binary):
            acc.integer = acc.integer and bool(torch.equal(xd, xd.round()))
        self._add_input(acc, x, nonzero * m.out_features, repeat, nonzero, binary, out, samples,
                        nonzero * m.out_features if bool(binary) else value_sops)

    def _count_matmul(self, acc: _LayerAcc, m: SpikingMatmul, args: Tuple[Any, ...], out: torch.Tensor) -> None:
        left, right = args[0], args[1]
        batch = out.shape[:-2]
        samples = int(out.shape[0] * out.shape[1]) if out.dim() >= 5 else math.prod(int(s) for s in batch)
        repeat = self._repeat(samples, acc.name)
        k = int(left.shape[-1])
        acc.dense_macs += out.numel() * k * repeat
        batch_numel = math.prod(int(s) for s in batch)
        if getattr(m, "spike_operand", "right") == "right":
            spikes, other = right, left
            # sum(ones_like(left) @ right) = M * (column sums of right), broadcast over the batch axes
            factor = int(left.shape[-2]) * batch_numel // math.prod(int(s) for s in right.shape[:-2])
        else:
            spikes, other = left, right
            factor = int(right.shape[-1]) * batch_numel // math.prod(int(s) for s in left.shape[:-2])
        acc.weight_elements = other.numel() // max(samples, 1)  # the real operand, per image-step
        nonzero, binary = self._stats(spikes)
        self._add_input(acc, spikes, nonzero * factor, repeat, nonzero, binary, out, samples,
                        nonzero * factor if bool(binary) else None)

    def reset(self) -> None:
        """Forget everything counted so far (hooks stay attached)."""
        self._layers.clear()
        self._neurons.clear()
        self._bn_ops = self._images = self._image_steps = 0
        self._Ts = set()

    def report(self, model_name: Optional[str] = None) -> EnergyReport:
        """Build the :class:`EnergyReport` of everything counted since the last :meth:`reset`."""
        if self._images == 0:
            raise RuntimeError("EnergyMeter has not seen a complete forward call yet")
        images, image_steps = self._images, self._image_steps
        T: Union[int, float] = next(iter(self._Ts)) if len(self._Ts) == 1 else image_steps / images

        def per(x: int, d: int) -> Union[int, float]:
            return x // d if x % d == 0 else x / d

        layers = []
        for acc in self._layers.values():
            binary = bool(acc.binary.item()) if acc.binary is not None else False
            layers.append(LayerRecord(
                name=acc.name, stage=stage_of(acc.name), kind=acc.kind, spike_input=binary and acc.after_neuron,
                macs_per_step=per(acc.dense_macs, image_steps),
                sops=float(acc.sops.item()) / images if acc.sops is not None else 0.0,
                input_rate=float(acc.nonzero.item()) / acc.numel if acc.numel else 0.0,
                after_neuron=acc.after_neuron, binary_input=binary,
                params=int(sum(p.numel() for p in acc.module.parameters(recurse=False))),
                input_shape=list(acc.input_shape), outputs_per_step=per(acc.outputs, image_steps),
                steps_computed=per(acc.computed, images),
                input_nonzero=float(acc.nonzero.item()) / images if acc.nonzero is not None else 0.0,
                weight_elements=acc.weight_elements, adds_bias=acc.adds_bias,
                value_sops=(float(acc.value_sops.item()) / images
                            if acc.value_sops is not None and not acc.negative else None),
                integer_input=acc.integer,
            ))
        neurons = [
            NeuronRecord(
                name=acc.name, stage=stage_of(acc.name), kind=acc.kind,
                neurons_per_step=per(acc.numel, image_steps),
                spikes=float(acc.spikes.item()) / images if acc.spikes is not None else 0.0,
                firing_rate=float(acc.spikes.item()) / acc.numel if acc.numel else 0.0,
            )
            for acc in self._neurons.values()
        ]
        params, params_no_bn = official_param_count(self.model)
        return EnergyReport(
            model=model_name or self.model_name, input_shape=list(self._input_shape),
            event_input=self._event_input, T=T, images=images, device=self._device, e_mac_pj=self.e_mac_pj,
            e_ac_pj=self.e_ac_pj, layers=layers, neurons=neurons,
            bn_ops_per_image_per_step=per(self._bn_ops, image_steps), params=params, params_no_bn=params_no_bn,
        )


def _batch_tensor(batch: Batch) -> torch.Tensor:
    """The input tensor of a batch: the tensor itself, the first item of a tuple/list, or ``batch['input']``."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, dict):
        for key in ("input", "image", "x"):
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
    raise TypeError(f"cannot find the input tensor in a batch of type {type(batch).__name__}")


@contextmanager
def model_mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Run the block in train or eval mode without gradients, then restore every module's training flag."""
    flags = {m: m.training for m in model.modules()}
    try:
        model.train(training)
        with torch.no_grad():
            yield
    finally:
        for m, flag in flags.items():
            m.training = flag


def analyze(model: nn.Module, inputs: Union[torch.Tensor, Iterable[Batch]], *, e_mac_pj: float = E_MAC_PJ,
            e_ac_pj: float = E_AC_PJ, T: Optional[int] = None, max_batches: Optional[int] = None,
            model_name: Optional[str] = None) -> EnergyReport:
    """Run ``model`` in eval mode on ``inputs`` (a batch or an iterable of batches, moved to the model's device)
    and count its energy; training flags, parameters and buffers are left as they were."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batches: Iterable[Batch] = [inputs] if isinstance(inputs, torch.Tensor) else inputs
    meter = EnergyMeter(model, T=T, e_mac_pj=e_mac_pj, e_ac_pj=e_ac_pj, model_name=model_name)
    with model_mode(model, False), meter:
        for batch in itertools.islice(batches, max_batches):
            model(_batch_tensor(batch).to(device, non_blocking=True))
    return meter.report()
