"""Deployment: ``torch.export`` programs (fused neurons) and ONNX files (reference neurons, T unrolled)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch
from torch import nn

from . import fileio
from .data.errors import DataError
from .fidelity import Fidelity, compare, neuron_outputs, recording_spikes
from .model.fuse import fuse_for_inference
from .neurons import MultiStepNeuron

__all__ = ["example_input", "prepare_for_export", "export_program", "export_onnx", "check_onnx"]

PathLike = Union[str, os.PathLike]
_MAX_BATCH = 4096  #: the largest batch of a --dynamic-batch export


def example_input(model: nn.Module, batch: int = 1, img_size: Optional[int] = None, T: Optional[int] = None,
                  events: Optional[bool] = None) -> torch.Tensor:
    """A random model input: images, or event frames ``[B, T, C, H, W]`` (``events=None``: as its config says)."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = img_size or getattr(model, "img_size", None) or cfg.get("input_size", (3, 224, 224))[-1]
    chans = getattr(model, "in_chans", 3)
    if events is None:
        events = cfg.get("input_kind") == "events"
    g = torch.Generator().manual_seed(0)
    if events:
        steps = T or getattr(model, "T", 4)
        return torch.rand(batch, steps, chans, size, size, generator=g).round()
    return torch.randn(batch, chans, size, size, generator=g)


def prepare_for_export(model: nn.Module, neuron_backend: Optional[str] = None) -> nn.Module:
    """An eval-mode copy of ``model`` with BatchNorm folded, optionally with every neuron on ``neuron_backend``."""
    fused = fuse_for_inference(model)
    if neuron_backend is not None:
        for m in fused.modules():
            if isinstance(m, MultiStepNeuron):
                m.backend = neuron_backend
    return fused


def _dynamic(dynamic_batch: bool):
    return ({0: torch.export.Dim("batch", min=1, max=_MAX_BATCH)},) if dynamic_batch else None


def export_program(model: nn.Module, x: torch.Tensor, path: Optional[PathLike] = None, dynamic_batch: bool = False,
                   fold: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` (folded unless ``fold=False``) on example input ``x``; saved as ``.pt2`` if ``path``."""
    prepared = prepare_for_export(model) if fold else model.eval()
    with torch.no_grad():
        program = torch.export.export(prepared, (x,), dynamic_shapes=_dynamic(dynamic_batch))
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, os.fspath(path))
    return program


class _WithSpikes(nn.Sequential):
    """Its one model, returning the logits followed by every neuron layer's spikes (for the ONNX check)."""

    def forward(self, x: torch.Tensor):
        with recording_spikes(self[0]) as spikes:
            logits = self[0](x)
        return (logits, *spikes.values())


def export_onnx(model: nn.Module, x: torch.Tensor, path: PathLike, dynamic_batch: bool = False,
                opset: int = 18, optimize: bool = True, spike_outputs: bool = False) -> Path:
    """Write ``model`` (folded, reference neurons) as an ONNX file for input shaped like ``x``.

    ``optimize``: run the exporter's graph optimiser (a smaller file, a slower export). ``spike_outputs``: every
    neuron layer's spikes as outputs after the logits (named by layer), for :func:`check_onnx`.
    """
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(
            "ONNX export needs the optional 'export' dependencies: pip install 'spikingresformer[export]'"
        ) from exc
    prepared = prepare_for_export(model, neuron_backend="reference")
    names = ["logits"]
    if spike_outputs:
        names += list(neuron_outputs(prepared, x)[1])
        prepared = _WithSpikes(prepared).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(
            prepared, (x,), dynamo=True, opset_version=opset, input_names=["input"], output_names=names,
            dynamic_shapes=_dynamic(dynamic_batch), verbose=False, optimize=optimize,
        )
    program.save(os.fspath(path))
    return path


def strip_spike_outputs(path: PathLike) -> None:
    """Keep only the logits output of an ONNX file written with ``spike_outputs=True`` (same computation)."""
    import onnx

    proto = onnx.load(os.fspath(path))
    del proto.graph.output[1:]  # the logits come first
    fileio.atomic_write_bytes(path, proto.SerializeToString())


def check_onnx(path: PathLike, model: nn.Module,
               x: Union[torch.Tensor, Sequence[torch.Tensor]]) -> Union[Fidelity, List[Fidelity]]:
    """Check ``path`` with ``onnx.checker``; how one ONNX Runtime session agrees with the eager, unfolded model on
    ``x`` (a batch: its :class:`Fidelity`; a sequence of batches: one each)."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(os.fspath(path), full_check=True)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    fids = []
    for batch in [x] if isinstance(x, torch.Tensor) else x:  # one session for every batch
        logits, *spikes = map(torch.from_numpy, session.run(None, {session.get_inputs()[0].name: batch.numpy()}))
        ref_logits, ref_spikes = neuron_outputs(model.eval(), batch)
        fids.append(compare(ref_logits, logits, ref_spikes if spikes else {}, spikes))
    return fids[0] if isinstance(x, torch.Tensor) else fids


def add_arguments(p) -> None:
    """Arguments of ``spikingresformer export``."""
    p.description = ("Export a model (BatchNorm folded) to ONNX, checked with ONNX Runtime, or a torch.export "
                     "archive.")
    p.add_argument("source", nargs="?", help="a run folder, model folder or weight file that carries its "
                   "description (config.json); the same as --checkpoint")
    p.add_argument("--model", help="registered variant, e.g. spikingresformer_cifar (default: the checkpoint's)")
    p.add_argument("--checkpoint", help="weights (official .pth, our checkpoints, .safetensors); none = fresh")
    p.add_argument("--format", choices=("onnx", "pt2"), default="onnx", help="ONNX file or torch.export archive")
    p.add_argument("--output", required=True, help="file to write (model.onnx / model.pt2)")
    p.add_argument("--T", type=int, help="time steps (images: repeated T times; events: frames per sample)")
    p.add_argument("--img-size", type=int, help="input side in pixels (default: the variant's)")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: the checkpoint's or variant's)")
    p.add_argument("--batch-size", type=int, default=1, help="batch of the example input")
    p.add_argument("--dynamic-batch", action="store_true", help="let the batch axis vary at run time")
    p.add_argument("--events", choices=("auto", "yes", "no"), default="auto",
                   help="input is event frames [B, T, C, H, W] (auto: as the variant was trained)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset")
    p.add_argument("--no-check", action="store_true", help="skip the onnx.checker / ONNX Runtime comparison")
    p.add_argument("--check-input", help="also compare on this input batch: a .pt file holding one tensor "
                   "shaped like the model's input (images [B, C, H, W] or event frames [B, T, C, H, W])")
    p.add_argument("--no-optimize", action="store_true", help="skip the ONNX graph optimiser (faster export)")


def run(args) -> int:
    """Build the model, load weights, export and (for ONNX) check the file against eager PyTorch."""
    from .hub import build_for_command

    checkpoint = getattr(args, "source", None) or args.checkpoint
    model = build_for_command(args.model, checkpoint, img_size=args.img_size, T=args.T, num_classes=args.num_classes)
    model.eval()
    events = None if args.events == "auto" else args.events == "yes"
    x = example_input(model, args.batch_size, args.img_size, args.T, events)
    checks = [("example batch", x)]
    if args.check_input and not args.no_check:
        checks.append((args.check_input, _read_check_input(args.check_input, x, args.dynamic_batch)))
    if args.format == "pt2":
        program = export_program(model, x, args.output, dynamic_batch=args.dynamic_batch)
        print(f"wrote {args.output} (torch.export, input {tuple(x.shape)})")
        for name, batch in checks if not args.no_check else []:
            with torch.no_grad():
                fid = compare(model(batch), program.module()(batch))
            print(f"  {name}: against eager PyTorch: {fid.summary()}")
        return 0
    export_onnx(model, x, args.output, dynamic_batch=args.dynamic_batch, opset=args.opset,
                optimize=not args.no_optimize, spike_outputs=not args.no_check)
    if args.no_check:
        print(f"wrote {args.output} (ONNX opset {args.opset}, input {tuple(x.shape)})")
        return 0
    try:
        results = check_onnx(args.output, model, [batch for _, batch in checks])
    finally:
        strip_spike_outputs(args.output)
    print(f"wrote {args.output} (ONNX opset {args.opset}, input {tuple(x.shape)}); onnx.checker passed")
    for (name, _), fid in zip(checks, results):
        print(f"  {name}: ONNX Runtime against eager PyTorch: {fid.summary()}")
    return 0


def _read_check_input(path: str, example: torch.Tensor, dynamic_batch: bool) -> torch.Tensor:
    """The ``--check-input`` batch, of a shape the exported graph takes (checked before anything is exported)."""
    try:
        batch = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"--check-input {path!r} could not be read as a tensor file: {exc}") from None
    dims, n = ", ".join(map(str, example.shape[1:])), len(example)
    want = f"[B, {dims}] (B up to {_MAX_BATCH})" if dynamic_batch else \
        f"[{n}, {dims}] (other batch sizes need --dynamic-batch)"
    if not isinstance(batch, torch.Tensor) or not batch.is_floating_point() or batch.shape[1:] != example.shape[1:] \
            or not (1 <= len(batch) <= _MAX_BATCH if dynamic_batch else len(batch) == n):
        what = f"a {batch.dtype} tensor of shape {tuple(batch.shape)}" if isinstance(batch, torch.Tensor) \
            else type(batch).__name__
        raise DataError(f"--check-input {path!r}: expected a floating-point tensor of shape {want}, got {what}")
    return batch.float()
