"""Time a training step, inference and peak memory of a SpikingResformer per neuron backend,
optionally side by side with the official release's own model code.

Every configuration runs in a fresh subprocess, so peak process memory (RSS on CPU) is its own, and
the library runs as a Python user imports it (nothing process-wide is tuned).
A configuration is ``backend[:precision[:malloc[:mode[:saving]]]]``; ``--backends`` and ``--precision``
build the list when ``--configs`` is not given (with ``--official``: default and lean, fp32 and bf16).
``saving`` is ``default`` (the model as built: spikes saved as bits), ``plain`` (autograd's own saving,
``model.set_spike_saving(False)``), ``lean`` (``model.set_grad_checkpointing(True)``) or ``bits``
(``model.set_spike_saving(True)``, today the same as ``default``). ``malloc`` is
``glibc`` (the C library's allocator, as a user has it) or ``tcmalloc`` (``libtcmalloc_minimal.so.4``
preloaded into that configuration's process with ``LD_PRELOAD``). ``mode`` is ``eager`` or
``compile`` (``torch.compile(model, fullgraph=True)``; the first warm-up step's extra time is
reported as the compile time).

With ``--official DIR --official-path SJ`` the official model (a checkout DIR of the official
repository, run by this Python with SJ, a folder holding spikingjelly 0.0.0.0.14, first on its path;
or ``--official-python PY``: an environment with spikingjelly 0.0.0.0.14, timm and the same torch) is
measured too, with the same variant, batch, T, image size, optimizer and step, in processes that
alternate with ours for ``--rounds`` rounds (official first). The official neurons use
spikingjelly's ``torch`` backend unless CUDA and CuPy are there (see ``official_model.py``); its
neuron states are reset after every step as in the official training loop. Ratios are against the
official float32 run: speed-ups official/ours, memory ours/official. For every configuration the
bytes that autograd saves for backward in one training forward are counted by kind (tensors holding
only 0 and 1, packed uint8 bits, other real values, parameters, integer/bool), each storage once.

Examples::

    python benchmarks/step.py --model spikingresformer_cifar --batch-size 16 --T 4 --steps 5
    python benchmarks/step.py --configs reference:fp32,fused:bf16,fused:bf16:tcmalloc,fused:bf16::eager:lean
    python benchmarks/step.py --configs fused:fp32,fused:fp32::compile,fused:bf16,fused:bf16::compile
    python benchmarks/step.py --model spikingresformer_s --img-size 224 --batch-size 32 \\
        --device cuda --precision bf16 --backends reference,fused,triton
    python benchmarks/step.py --model spikingresformer_cifar --batch-size 16 --T 4 --img-size 32 \\
        --official /work/official \\
        --official-path /work/official-sj --official-precision bf16 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

_HERE = os.path.dirname(os.path.abspath(__file__))

PRECISIONS = ("fp32", "bf16", "fp16")
MALLOCS = ("glibc", "tcmalloc")
#: what the model keeps for backward: as built, autograd's own (bits off), lean (set_grad_checkpointing), bits
SAVINGS = ("default", "plain", "lean", "bits")
#: ours side by side with the official code when --configs is not given
OFFICIAL_DEFAULT_CONFIGS = "fused:fp32,fused:bf16,fused:fp32::eager:lean,fused:bf16::eager:lean"
TCMALLOC = "libtcmalloc_minimal.so.4"

#: Kinds of saved-for-backward storage that :func:`saved_for_backward` reports, in print order.
SAVED_KINDS = ("spike", "bits", "real", "params", "other")


def _parse_config(text: str, precision: str, malloc: str) -> Dict[str, str]:
    parts = text.split(":")
    cfg = {"impl": "ours", "backend": parts[0], "precision": precision, "malloc": malloc, "mode": "eager",
           "saving": "default"}
    if len(parts) > 1 and parts[1]:
        cfg["precision"] = parts[1]
    if len(parts) > 2 and parts[2]:
        cfg["malloc"] = parts[2]
    if len(parts) > 3 and parts[3]:
        cfg["mode"] = parts[3]
    if len(parts) > 4 and parts[4]:
        cfg["saving"] = parts[4]
    if cfg["saving"] not in SAVINGS:
        raise SystemExit(f"unknown saving in {text!r} (expected one of {', '.join(SAVINGS)})")
    if cfg["mode"] not in ("eager", "compile"):
        raise SystemExit(f"unknown mode in {text!r} (eager or compile)")
    if cfg["precision"] not in PRECISIONS:
        raise SystemExit(f"unknown precision in {text!r} (expected one of {', '.join(PRECISIONS)})")
    if cfg["malloc"] not in MALLOCS:
        raise SystemExit(f"unknown malloc setting in {text!r}")
    return cfg


def official_configs(precisions: str, backend: str) -> List[Dict[str, str]]:
    """Configurations of the official model: float32 always (the baseline), then any precision asked for."""
    wanted = ["fp32"]
    for p in (q.strip() for q in precisions.split(",")):
        if not p:
            continue
        if p not in PRECISIONS:
            raise SystemExit(f"--official-precision: unknown precision {p!r} (expected fp32, bf16 or fp16)")
        if p not in wanted:
            wanted.append(p)
    return [{"impl": "official", "backend": backend, "precision": p, "malloc": "glibc", "mode": "eager"}
            for p in wanted]


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="spikingresformer_cifar")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--img-size", type=int, default=None, help="default: the variant's own size")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="bf16", choices=PRECISIONS,
                   help="autocast dtype for the model (fp32 = strict float32)")
    p.add_argument("--backends", default=None, help="comma list (default: reference,fused[,triton on cuda])")
    p.add_argument("--configs", default=None,
                   help="comma list of backend[:precision[:malloc[:mode[:saving]]]], or none (official only)")
    p.add_argument("--malloc", default="glibc", choices=MALLOCS)
    p.add_argument("--steps", type=int, default=5, help="timed training steps (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--infer-steps", type=int, default=None, help="timed inference passes (default: --steps)")
    p.add_argument("--channels-last", action="store_true", help="channels-last model and input (ours only)")
    p.add_argument("--compile", action="store_true", help="torch.compile every configuration of ours (as mode=compile)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--no-infer", action="store_true")
    p.add_argument("--no-saved", action="store_true", help="skip counting the saved-for-backward bytes")
    p.add_argument("--rounds", type=int, default=None,
                   help="run every configuration this many times, alternating (default: 2 with --official, else 1)")
    p.add_argument("--official", default=None, metavar="DIR",
                   help="checkout of the official SpikingResformer repository: measure its model too")
    p.add_argument("--official-python", default=None, metavar="PY",
                   help="Python of the environment with spikingjelly 0.0.0.0.14 that runs the official model")
    p.add_argument("--official-path", default=None, metavar="DIR",
                   help="folder with spikingjelly 0.0.0.0.14 (pip install --no-deps --target DIR): the official "
                        "model then runs on this Python, put first on its PYTHONPATH, so both sides map the same "
                        "torch files (a second copy of the same wheel can differ by ~150 MB of resident pages)")
    p.add_argument("--official-precision", default="fp32",
                   help="comma list of precisions for the official model; fp32 always runs (the baseline)")
    p.add_argument("--official-backend", default="auto", choices=("auto", "torch", "cupy"),
                   help="spikingjelly backend of the official neurons (auto: cupy on CUDA with CuPy, else torch)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


# --------------------------------------------------------------------------------------------------
# Worker: one configuration in this process
# --------------------------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def classify_saved(t: Any, param_keys: frozenset = frozenset()) -> str:
    """Kind of one saved tensor: ``params``, ``bits`` (uint8), ``spike`` (floating, only 0 and 1),
    ``real`` (other floating) or ``other`` (integer, bool, complex)."""
    import torch

    if _storage_key(t)[0] in param_keys:
        return "params"
    if t.dtype == torch.uint8:
        return "bits"
    if t.is_floating_point():
        if t.numel() == 0:
            return "real"
        with torch.no_grad():
            return "spike" if bool(((t == 0) | (t == 1)).all()) else "real"
    return "other"


def _storage_key(t: Any) -> Tuple[Tuple[str, int], int]:
    """((device, storage address), storage bytes) of a tensor; its own size where it has no storage."""
    try:
        st = t.untyped_storage()
        return (str(t.device), st.data_ptr()), st.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):
        return (str(t.device), id(t)), t.numel() * t.element_size()


def saved_for_backward(run: Callable[[], Any], params: Any = ()) -> Dict[str, Any]:
    """Count what autograd saves for backward while ``run()`` builds a graph, by kind, in MB.

    Each storage counts once (keyed by its address), at its full size, under the kind of the first
    tensor saved from it. ``params`` are the model's parameters (their storages count as
    ``params``). A real-valued tensor that happens to hold only 0 and 1 counts as ``spike``.
    """
    import torch

    param_keys = frozenset(_storage_key(p)[0] for p in params)
    seen: set = set()
    nbytes = dict.fromkeys(SAVED_KINDS, 0)
    count = dict.fromkeys(SAVED_KINDS, 0)

    def pack(t: torch.Tensor) -> torch.Tensor:
        key, size = _storage_key(t)
        if key not in seen:
            seen.add(key)
            kind = classify_saved(t, param_keys)
            nbytes[kind] += size
            count[kind] += 1
        return t

    # the model's own hooks (spikes as bits) are innermost: count what they keep, too
    try:
        from spikingresformer.neurons.bits import SpikeBits
    except ImportError:  # the official code's environment has no spikingresformer
        SpikeBits = type("NoSpikeBits", (), {"_pack": None})

    own_pack = SpikeBits._pack

    def counted(self: Any, t: torch.Tensor) -> Any:
        kept = own_pack(self, t)
        pack(kept[0] if isinstance(kept, tuple) else kept)
        return kept

    SpikeBits._pack = counted  # type: ignore[method-assign]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = run()
        del out
    finally:
        SpikeBits._pack = own_pack  # type: ignore[method-assign]
    mb = {k: v / 2**20 for k, v in nbytes.items()}
    mb["total"] = sum(nbytes.values()) / 2**20
    return {"mb": mb, "tensors": count}


class _Subject:
    """What the measuring loop drives: parameters, a logits function and a state reset."""

    def __init__(self, model: Any, logits: Callable[[Any], Any], reset: Callable[[], None],
                 in_chans: int, img: int, num_classes: int) -> None:
        self.model, self.logits, self.reset = model, logits, reset
        self.in_chans, self.img, self.num_classes = in_chans, img, num_classes


def _build_ours(args: argparse.Namespace, cfg: Dict[str, Any], device: Any, result: Dict[str, Any]) -> _Subject:
    import torch

    import spikingresformer as sr

    result["malloc_status"] = os.environ.get("LD_PRELOAD") or "glibc"
    kwargs: Dict[str, Any] = dict(T=args.T, neuron_backend=cfg["backend"])
    if args.img_size:
        kwargs["img_size"] = args.img_size
    model = sr.create_model(args.model, **kwargs).to(device)
    saving = cfg.get("saving", "default")
    if saving == "lean":
        model.set_grad_checkpointing(True)
    elif saving == "bits":
        model.set_spike_saving(True)
    elif saving == "plain":  # autograd's own saving: spikes kept in their dtype
        model.set_spike_saving(False)
    result["spike_bits"], result["lean"] = model.save_spikes_as_bits, model.grad_checkpointing
    if args.channels_last:  # 4-D weights only (the firing-rate buffers are 5-D)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 4:
                    p.data = p.data.contiguous(memory_format=torch.channels_last)
    compiled = args.compile or cfg.get("mode") == "compile"
    run_model = torch.compile(model, fullgraph=True) if compiled else model
    return _Subject(model, run_model, lambda: None, model.in_chans, args.img_size or model.img_size,
                    model.num_classes)


def _build_official(args: argparse.Namespace, cfg: Dict[str, Any], device: Any, result: Dict[str, Any]) -> _Subject:
    if _HERE not in sys.path:
        sys.path.append(_HERE)
    import official_model

    img, num_classes = cfg["img"], cfg["num_classes"]
    om = official_model.build_official(args.official, args.model, args.T, num_classes, img,
                                       backend=cfg["backend"], device=str(device))
    result["malloc_status"] = "glibc defaults (official code, untouched)"
    result["official"] = om.info
    result["neuron_backend"] = om.backend
    return _Subject(om.model, om.logits, om.reset, om.in_chans, img, num_classes)


def run_worker(args: argparse.Namespace, cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Measure one configuration (ours or the official model) in this process and return its numbers."""
    import torch
    import torch.nn.functional as F

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    result: Dict[str, Any] = {k: v for k, v in cfg.items() if k not in ("img", "num_classes")}
    result["torch"] = torch.__version__
    official = cfg.get("impl") == "official"
    subject = (_build_official if official else _build_ours)(args, cfg, device, result)
    model = subject.model
    x = torch.randn(args.batch_size, subject.in_chans, subject.img, subject.img, device=device)
    y = torch.randint(0, subject.num_classes, (args.batch_size,), device=device)
    if args.channels_last and not official:
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg["precision"]]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16 and device.type == "cuda")

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    result["threads"] = torch.get_num_threads()
    result["img"] = subject.img
    result["rss_after_build_mb"] = current_rss_mb()
    first_train = first_infer = None

    if not args.no_train:
        model.train()
        times: List[float] = []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for i in range(args.warmup + args.steps):
            sync()
            t0 = time.perf_counter()
            with autocast():
                loss = F.cross_entropy(subject.logits(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            subject.reset()
            sync()
            if i == 0:
                first_train = time.perf_counter() - t0
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
            del loss
        result["train_first_step_s"] = first_train
        result["train_step_s"] = statistics.median(times)
        result["train_step_min_s"] = min(times)
        result["train_step_times_s"] = times
        result["train_img_per_s"] = args.batch_size / result["train_step_s"]
        result["train_peak_rss_mb"] = _peak_rss_mb()
        if device.type == "cuda":
            result["train_peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20

    if not args.no_infer:
        model.eval()
        times = []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        n = args.infer_steps or args.steps
        with torch.no_grad():
            for i in range(max(1, args.warmup) + n):
                sync()
                t0 = time.perf_counter()
                with autocast():
                    subject.logits(x)
                subject.reset()
                sync()
                if i == 0:
                    first_infer = time.perf_counter() - t0
                if i >= max(1, args.warmup):
                    times.append(time.perf_counter() - t0)
        result["infer_first_s"] = first_infer
        result["infer_s"] = statistics.median(times)
        result["infer_min_s"] = min(times)
        result["infer_times_s"] = times
        result["infer_img_per_s"] = args.batch_size / result["infer_s"]
        result["peak_rss_mb"] = _peak_rss_mb()
        if device.type == "cuda":
            result["infer_peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20

    if result.get("lean"):  # selective checkpointing keeps its tensors outside autograd's saved tensors
        result["saved_error"] = "lean mode: checkpointed blocks keep their tensors outside the hooks"
    elif not args.no_saved:  # after the timings, so it changes none of them
        model.train()

        def forward_loss() -> Any:
            with autocast():
                return F.cross_entropy(subject.logits(x), y, label_smoothing=0.1)

        try:
            result["saved"] = saved_for_backward(forward_loss, model.parameters())
        except Exception as exc:  # e.g. hooks that a compiled graph does not support
            result["saved_error"] = f"{type(exc).__name__}: {exc}"[:300]
        subject.reset()
    return result


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def config_key(cfg: Dict[str, Any]) -> str:
    """Identity of a configuration across rounds."""
    return "{impl}:{backend}:{precision}:{malloc}:{mode}:{saving}".format(**{**{"impl": "ours", "saving": "default"},
                                                                            **cfg})


def run_order(official: List[Dict[str, Any]], ours: List[Dict[str, Any]], rounds: int) -> List[Dict[str, Any]]:
    """Process order: each round runs the official configurations, then ours (official, ours, official, ...)."""
    if rounds < 1:
        raise SystemExit(f"--rounds must be at least 1, got {rounds}")
    return [cfg for _ in range(rounds) for cfg in (*official, *ours)]


def merge_rounds(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One configuration's rounds as one result: medians over all timed steps, per-round spread."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return dict(runs[0], rounds=len(runs))
    out = dict(good[0])
    out["rounds"] = len(runs)
    out["failed_rounds"] = [r["error"] for r in runs if "error" in r]
    for kind, key in (("train_step", "train_step_times_s"), ("infer", "infer_times_s")):
        if all(key in r for r in good):
            pooled = [t for r in good for t in r[key]]
            out[key] = pooled
            out[f"{kind}_s"] = statistics.median(pooled)
            out[f"{kind}_min_s"] = min(pooled)
            out[f"{kind}_round_medians_s"] = [statistics.median(r[key]) for r in good]
    if "train_step_s" in out and "batch_size" in out:
        out["train_img_per_s"] = out["batch_size"] / out["train_step_s"]
    if "infer_s" in out and "batch_size" in out:
        out["infer_img_per_s"] = out["batch_size"] / out["infer_s"]
    for key in ("train_peak_rss_mb", "peak_rss_mb", "rss_after_build_mb", "train_peak_cuda_mb",
                "infer_peak_cuda_mb", "train_first_step_s", "infer_first_s"):
        vals = [r[key] for r in good if r.get(key) is not None]
        if vals:
            out[key] = statistics.median(vals)
            out[key + "_rounds"] = vals
    return out


def _peak(r: Dict[str, Any]) -> Optional[float]:
    return r.get("train_peak_cuda_mb", r.get("train_peak_rss_mb"))


def ratios(r: Dict[str, Any], base: Dict[str, Any]) -> Dict[str, Optional[float]]:
    """Speed-ups ``base/r`` (train, infer) and memory ``r/base`` (peak, peak above the built model, saved).

    ``growth`` compares what the training step adds to the process after the model is built, leaving
    out ``import torch`` and the libraries, whose resident size depends on the environment and the
    page cache rather than on the code measured.
    """
    out: Dict[str, Optional[float]] = {"train": None, "infer": None, "peak": None, "saved": None, "growth": None}
    if "error" in r or "error" in base:
        return out
    if r.get("train_step_s") and base.get("train_step_s"):
        out["train"] = base["train_step_s"] / r["train_step_s"]
    if r.get("infer_s") and base.get("infer_s"):
        out["infer"] = base["infer_s"] / r["infer_s"]
    if _peak(r) and _peak(base):
        out["peak"] = _peak(r) / _peak(base)
        if "train_peak_rss_mb" in r and r.get("rss_after_build_mb") and base.get("rss_after_build_mb"):
            grown = base["train_peak_rss_mb"] - base["rss_after_build_mb"]
            if grown > 0:
                out["growth"] = (r["train_peak_rss_mb"] - r["rss_after_build_mb"]) / grown
    rs, bs = r.get("saved", {}).get("mb", {}).get("total"), base.get("saved", {}).get("mb", {}).get("total")
    if rs and bs:
        out["saved"] = rs / bs
    return out


def _fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _label(r: Dict[str, Any]) -> str:
    if r.get("impl") == "official":
        return f"official/{r.get('neuron_backend', r['backend'])}"
    saving = r.get("saving", "default")
    return r["backend"] if saving == "default" else f"{r['backend']}/{saving}"


def _spread(r: Dict[str, Any]) -> str:
    meds = r.get("train_step_round_medians_s") or []
    return f"{min(meds):.2f}-{max(meds):.2f}" if len(meds) > 1 else "-"


def print_table(results: List[Dict[str, Any]], baseline: Optional[Dict[str, Any]]) -> None:
    """Print one row per configuration, with ratios against ``baseline``."""
    head = (f"{'backend':<19} {'prec':<5} {'malloc':<7} {'mode':<7} {'1st(s)':>7} {'train s':>8} {'(min)':>7} "
            f"{'rounds':>10} {'img/s':>7} {'infer s':>8} {'(min)':>7} {'peak MB':>8} {'x train':>8} {'x infer':>8} "
            f"{'mem ratio':>9}")
    print(head)
    print("-" * len(head))
    for r in results:
        if "error" in r:
            print(f"{_label(r):<19} {r['precision']:<5} {r['malloc']:<7} {r.get('mode', 'eager'):<7} "
                  f"ERROR: {r['error'][:80]}")
            continue
        q = ratios(r, baseline if baseline is not None else {"error": "no baseline"})
        first = r.get("train_first_step_s", r.get("infer_first_s"))
        print(f"{_label(r):<19} {r['precision']:<5} {r['malloc']:<7} {r.get('mode', 'eager'):<7} "
              f"{_fmt(first, '7.1f')} {_fmt(r.get('train_step_s'), '8.3f')} "
              f"{_fmt(r.get('train_step_min_s'), '7.3f')} {_spread(r):>10} {_fmt(r.get('train_img_per_s'), '7.1f')} "
              f"{_fmt(r.get('infer_s'), '8.3f')} {_fmt(r.get('infer_min_s'), '7.3f')} {_fmt(_peak(r), '8.0f')} "
              f"{_fmt(q['train'], '8.2f')} {_fmt(q['infer'], '8.2f')} {_fmt(q['peak'], '9.2f')}")
        for err in r.get("failed_rounds") or []:
            print(f"{'':<19} a round failed: {err[:100]}")


def print_ratio_block(ours: List[Dict[str, Any]], base: Dict[str, Any]) -> None:
    """Ratios of each of our configurations against one official configuration."""
    print(f"against official {base['precision']} (speed-up official/ours; memory ours/official):")
    print(f"  {'ours':<30} {'train':>7} {'infer':>7} {'peak RSS':>9} {'above build':>12} {'saved':>7}")
    for r in ours:
        q = ratios(r, base)
        name = f"{_label(r)}:{r['precision']}:{r['malloc']}:{r.get('mode', 'eager')}"
        print(f"  {name:<30} {_fmt(q['train'], '7.2f')} {_fmt(q['infer'], '7.2f')} {_fmt(q['peak'], '9.2f')} "
              f"{_fmt(q['growth'], '12.2f')} {_fmt(q['saved'], '7.2f')}")
    print(f"  (process RSS after building the model: official {_fmt(base.get('rss_after_build_mb'), '.0f')} MB, ours "
          + ", ".join(_fmt(r.get("rss_after_build_mb"), ".0f") for r in ours) + " MB)")


def print_saved(results: List[Dict[str, Any]]) -> None:
    """Saved-for-backward MB by kind, one row per configuration."""
    rows = [r for r in results if "saved" in r or "saved_error" in r]
    if not rows:
        return
    print("saved for backward in one training forward, MB (each storage once): "
          "spike = only 0/1 values, bits = uint8, real = other floating, params = parameters")
    print(f"  {'backend':<19} {'prec':<5} {'mode':<7} " + " ".join(f"{k:>8}" for k in (*SAVED_KINDS, "total")))
    for r in rows:
        lead = f"  {_label(r):<19} {r['precision']:<5} {r.get('mode', 'eager'):<7} "
        if "saved" not in r:
            print(lead + f"not counted: {r['saved_error'][:90]}")
            continue
        mb = r["saved"]["mb"]
        print(lead + " ".join(f"{mb[k]:8.1f}" for k in (*SAVED_KINDS, "total")))


def machine_description() -> str:
    """CPU model and core count (what the figures were measured on)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}"


def probe_official_python(python: str, path: Optional[str] = None) -> Dict[str, str]:
    """Versions of torch and spikingjelly in the official environment; a clear error where it is unusable."""
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise SystemExit(f"--official-python: expected an executable Python, got {python!r}")
    code = ("import json, importlib.metadata as m, torch; "
            "print(json.dumps({'torch': torch.__version__, 'spikingjelly': m.version('spikingjelly'), "
            "'timm': m.version('timm')}))")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, env=_official_env(path))
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"--official-python {python}: expected an environment with torch, spikingjelly and timm; "
                         f"importing them failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _official_env(path: Optional[str] = None) -> Dict[str, str]:
    """The official side's environment: its own packages only, or ``path`` first (``--official-path``)."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if path:
        env["PYTHONPATH"] = os.path.abspath(path)
    return env


def _ours_env(malloc: str) -> Dict[str, str]:
    """Environment of one of our configurations: ``tcmalloc`` preloads it into that process only."""
    env = dict(os.environ)
    if malloc == "tcmalloc":
        env["LD_PRELOAD"] = " ".join(filter(None, [env.get("LD_PRELOAD"), TCMALLOC]))
    return env


def _variant_shape(model: str, img_size: Optional[int]) -> Tuple[int, int]:
    import spikingresformer as sr

    if model not in sr.VARIANTS:
        raise SystemExit(f"unknown --model {model!r}; expected one of {sorted(sr.VARIANTS)}")
    spec = sr.VARIANTS[model]
    return int(img_size or spec.get("img_size", 224)), int(spec.get("num_classes", 1000))


def _run_one(cfg: Dict[str, Any], passthrough: List[str], python: str, env: Dict[str, str]) -> Dict[str, Any]:
    cmd = [python, os.path.abspath(__file__), *passthrough, "--worker", json.dumps(cfg)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        r = {k: v for k, v in cfg.items() if k not in ("img", "num_classes")}
        r["error"] = (proc.stderr.strip().splitlines() or ["failed"])[-1]
    else:
        r = json.loads(line[len("RESULT "):])
    r["wall_s"] = time.perf_counter() - t0
    return r


def main(argv: Optional[List[str]] = None) -> int:
    """Run every configuration in its own subprocess (alternating rounds), print tables, optionally write JSON."""
    args = build_parser().parse_args(argv)
    if args.worker:
        cfg = json.loads(args.worker)
        print("RESULT " + json.dumps(run_worker(args, cfg)), flush=True)
        return 0
    if args.configs == "none":  # only the official configurations (with --official)
        ours = []
    elif args.configs or args.official:
        ours = [_parse_config(c, args.precision, args.malloc)
                for c in (args.configs or OFFICIAL_DEFAULT_CONFIGS).split(",")]
    else:
        backends = args.backends or ("reference,fused,triton" if args.device.startswith("cuda") else "reference,fused")
        ours = [_parse_config(b, args.precision, args.malloc) for b in backends.split(",")]
    official: List[Dict[str, Any]] = []
    versions: Dict[str, str] = {}
    if (args.official_python or args.official_path) and not args.official:
        raise SystemExit("--official-python/--official-path need --official DIR (a checkout of the official repository)")
    if args.official:
        if args.official_path and not args.official_python:
            args.official_python = sys.executable
        if not args.official_python:
            raise SystemExit("--official needs --official-path DIR (spikingjelly 0.0.0.0.14 installed there) or "
                             "--official-python PY (an environment with spikingjelly 0.0.0.0.14, timm and torch)")
        if _HERE not in sys.path:
            sys.path.append(_HERE)
        import official_model

        try:
            official_model.check_checkout(args.official)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
        versions = probe_official_python(args.official_python, args.official_path)
        img, num_classes = _variant_shape(args.model, args.img_size)
        official = [dict(c, img=img, num_classes=num_classes)
                    for c in official_configs(args.official_precision, args.official_backend)]
    rounds = args.rounds if args.rounds is not None else (2 if official else 1)
    passthrough = list(argv if argv is not None else sys.argv[1:])
    runs: Dict[str, List[Dict[str, Any]]] = {}
    for cfg in run_order(official, ours, rounds):
        if cfg["impl"] == "official":
            python, env = args.official_python, _official_env(args.official_path)
        else:
            python, env = sys.executable, _ours_env(cfg["malloc"])
        r = _run_one(cfg, passthrough, python, env)
        r["batch_size"] = args.batch_size
        runs.setdefault(config_key(cfg), []).append(r)
        print(f"# {config_key(cfg)}: done in {r['wall_s']:.0f} s", file=sys.stderr, flush=True)
    results = [merge_rounds(rs) for rs in runs.values()]
    baseline = results[0] if results else None
    import torch

    print(f"load average at end: {os.getloadavg()}; times are medians over all rounds' timed steps, "
          f"(min) the fastest step, rounds the range of per-round medians")
    print(f"machine: {machine_description()}; torch {torch.__version__}")
    if official:
        same = "same torch" if versions.get("torch") == torch.__version__ else "DIFFERENT torch"
        digest = official_model.code_digest(args.official)
        where = f"python {args.official_python}" + (f" with {args.official_path} first" if args.official_path else "")
        print(f"official: {args.official} (model files sha256 {digest}), {where}: "
              f"torch {versions.get('torch')} ({same}), spikingjelly {versions.get('spikingjelly')}, "
              f"timm {versions.get('timm')}; {rounds} alternating rounds")
        if versions.get("spikingjelly") != official_model.EXPECTED_SPIKINGJELLY:
            print(f"WARNING: the official code expects spikingjelly {official_model.EXPECTED_SPIKINGJELLY}")
    print(f"model={args.model} batch={args.batch_size} T={args.T} img={args.img_size or 'default'} "
          f"device={args.device} channels_last={args.channels_last} "
          f"compile={args.compile}; ratios against the first row")
    print_table(results, baseline)
    if official:
        for base in (r for r in results if r.get("impl") == "official"):
            print_ratio_block([r for r in results if r.get("impl") != "official"], base)
    print_saved(results)
    out = {"args": {k: v for k, v in vars(args).items() if k != "worker"}, "machine": machine_description(),
           "official_env": versions, "results": results, "runs": runs}
    if args.json:
        from spikingresformer.fileio import atomic_write_bytes

        atomic_write_bytes(args.json, (json.dumps(out, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
