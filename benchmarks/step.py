"""Time a training step, inference and peak memory of a SpikingResformer per neuron backend.

Every configuration runs in a fresh subprocess, so peak process memory (RSS on CPU) is its own.
A configuration is ``backend[:precision[:malloc[:mode]]]``; ``--backends`` and ``--precision``
build the list when ``--configs`` is not given. ``malloc`` is ``tuned`` (what our commands apply, see
``spikingresformer.runtime``) or ``system`` (glibc defaults, as the official release runs). ``mode``
is ``eager`` or ``compile`` (``torch.compile(model, fullgraph=True)``; the first warm-up step's
extra time is reported as the compile time).

Examples::

    python benchmarks/step.py --model spikingresformer_cifar --batch-size 16 --T 4 --steps 5
    python benchmarks/step.py --configs reference:fp32:system,fused:bf16,fused:fp32 --json out.json
    python benchmarks/step.py --configs fused:fp32,fused:fp32:tuned:compile,fused:bf16,fused:bf16:tuned:compile
    python benchmarks/step.py --model spikingresformer_s --img-size 224 --batch-size 32 \\
        --device cuda --precision bf16 --backends reference,fused,triton
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional


def _parse_config(text: str, precision: str, malloc: str) -> Dict[str, str]:
    parts = text.split(":")
    cfg = {"backend": parts[0], "precision": precision, "malloc": malloc, "mode": "eager"}
    if len(parts) > 1 and parts[1]:
        cfg["precision"] = parts[1]
    if len(parts) > 2 and parts[2]:
        cfg["malloc"] = parts[2]
    if len(parts) > 3 and parts[3]:
        cfg["mode"] = parts[3]
    if cfg["mode"] not in ("eager", "compile"):
        raise SystemExit(f"unknown mode in {text!r} (eager or compile)")
    if cfg["precision"] not in ("fp32", "bf16", "fp16"):
        raise SystemExit(f"unknown precision in {text!r}")
    if cfg["malloc"] not in ("tuned", "system"):
        raise SystemExit(f"unknown malloc setting in {text!r}")
    return cfg


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="spikingresformer_cifar")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--img-size", type=int, default=None, help="default: the variant's own size")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"),
                   help="autocast dtype for the model (fp32 = strict float32)")
    p.add_argument("--backends", default=None, help="comma list (default: reference,fused[,triton on cuda])")
    p.add_argument("--configs", default=None, help="comma list of backend[:precision[:malloc]]")
    p.add_argument("--malloc", default="tuned", choices=("tuned", "system"))
    p.add_argument("--steps", type=int, default=5, help="timed training steps (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--infer-steps", type=int, default=None, help="timed inference passes (default: --steps)")
    p.add_argument("--channels-last", action="store_true", help="channels-last model and input")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile every configuration (as mode=compile)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--no-infer", action="store_true")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


# --------------------------------------------------------------------------------------------------
# Worker: one configuration in this process
# --------------------------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def run_worker(args: argparse.Namespace, cfg: Dict[str, str]) -> Dict[str, Any]:
    """Measure one configuration in this process and return its numbers."""
    import torch
    import torch.nn.functional as F

    import spikingresformer as sr
    from spikingresformer import runtime

    runtime.apply_defaults()  # honours SPIKINGRESFORMER_MALLOC=system set by the driver
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    kwargs: Dict[str, Any] = dict(T=args.T, neuron_backend=cfg["backend"])
    if args.img_size:
        kwargs["img_size"] = args.img_size
    model = sr.create_model(args.model, **kwargs).to(device)
    img = args.img_size or model.img_size
    num_classes = model.num_classes
    x = torch.randn(args.batch_size, model.in_chans, img, img, device=device)
    y = torch.randint(0, num_classes, (args.batch_size,), device=device)
    if args.channels_last:  # 4-D weights only (the firing-rate buffers are 5-D)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 4:
                    p.data = p.data.contiguous(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    compiled = args.compile or cfg.get("mode") == "compile"
    run_model = torch.compile(model, fullgraph=True) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg["precision"]]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16 and device.type == "cuda")

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    result: Dict[str, Any] = dict(cfg)
    result["malloc_status"] = runtime.malloc_settings()
    result["threads"] = torch.get_num_threads()
    result["rss_after_build_mb"] = _current_rss_mb()
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
                loss = F.cross_entropy(run_model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
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
                    run_model(x)
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
    return result


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def _fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(results: List[Dict[str, Any]], baseline: Optional[Dict[str, Any]]) -> None:
    """Print one row per configuration, with ratios against ``baseline``."""
    head = (f"{'backend':<10} {'prec':<5} {'malloc':<7} {'mode':<7} {'1st(s)':>7} {'train s':>8} {'(min)':>7} {'img/s':>7} {'infer s':>8} "
            f"{'(min)':>7} {'peak MB':>8} {'x train':>8} {'x infer':>8} {'mem ratio':>9}")
    print(head)
    print("-" * len(head))
    for r in results:
        if "error" in r:
            print(f"{r['backend']:<10} {r['precision']:<5} {r['malloc']:<7} {r.get('mode', 'eager'):<7} "
                  f"ERROR: {r['error'][:80]}")
            continue
        peak = r.get("train_peak_cuda_mb", r.get("train_peak_rss_mb"))
        xs = xi = mem = None
        if baseline is not None and "error" not in baseline:
            bpeak = baseline.get("train_peak_cuda_mb", baseline.get("train_peak_rss_mb"))
            if r.get("train_step_s") and baseline.get("train_step_s"):
                xs = baseline["train_step_s"] / r["train_step_s"]
            if r.get("infer_s") and baseline.get("infer_s"):
                xi = baseline["infer_s"] / r["infer_s"]
            if peak and bpeak:
                mem = peak / bpeak
        first = r.get("train_first_step_s", r.get("infer_first_s"))
        print(f"{r['backend']:<10} {r['precision']:<5} {r['malloc']:<7} {r.get('mode', 'eager'):<7} "
              f"{_fmt(first, '7.1f')} {_fmt(r.get('train_step_s'), '8.3f')} "
              f"{_fmt(r.get('train_step_min_s'), '7.3f')} {_fmt(r.get('train_img_per_s'), '7.1f')} "
              f"{_fmt(r.get('infer_s'), '8.3f')} {_fmt(r.get('infer_min_s'), '7.3f')} {_fmt(peak, '8.0f')} "
              f"{_fmt(xs, '8.2f')} {_fmt(xi, '8.2f')} {_fmt(mem, '9.2f')}")


def main(argv: Optional[List[str]] = None) -> int:
    """Run every configuration in its own subprocess, print a table, optionally write JSON."""
    args = build_parser().parse_args(argv)
    if args.worker:
        cfg = json.loads(args.worker)
        print("RESULT " + json.dumps(run_worker(args, cfg)), flush=True)
        return 0
    if args.configs:
        configs = [_parse_config(c, args.precision, args.malloc) for c in args.configs.split(",")]
    else:
        backends = args.backends or ("reference,fused,triton" if args.device.startswith("cuda") else "reference,fused")
        configs = [_parse_config(b, args.precision, args.malloc) for b in backends.split(",")]
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    results = []
    for cfg in configs:
        env = dict(os.environ)
        env["SPIKINGRESFORMER_MALLOC"] = cfg["malloc"]
        cmd = [sys.executable, os.path.abspath(__file__), *passthrough, "--worker", json.dumps(cfg)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            r = dict(cfg, error=(proc.stderr.strip().splitlines() or ["failed"])[-1])
        else:
            r = json.loads(line[len("RESULT "):])
        r["wall_s"] = time.perf_counter() - t0
        results.append(r)
        print(f"# {cfg}: done in {r['wall_s']:.0f} s", file=sys.stderr, flush=True)
    baseline = results[0] if results else None
    print(f"load average at end: {os.getloadavg()}; times are medians, (min) the fastest step")
    print(f"model={args.model} batch={args.batch_size} T={args.T} img={args.img_size or 'default'} "
          f"device={args.device} channels_last={args.channels_last} checkpointing={args.grad_checkpointing} "
          f"compile={args.compile}; ratios against the first row")
    print_table(results, baseline)
    out = {"args": {k: v for k, v in vars(args).items() if k != "worker"}, "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
