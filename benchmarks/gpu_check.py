"""GPU checks for a lent CUDA machine: Triton neurons against the reference, lean mode and spikes as
bits identical to the default on CUDA, and the largest batch.

    python benchmarks/gpu_check.py triton                      # Triton vs reference, every kind and dtype
    python benchmarks/gpu_check.py lean                        # lean / bits vs default, float64, on CUDA
    python benchmarks/gpu_check.py max-batch --model spikingresformer_s --img-size 224 --T 4
    python benchmarks/gpu_check.py max-batch ... --official DIR --official-python PY

``max-batch`` doubles the batch until a training step (bf16 autocast, AdamW) runs out of memory,
then bisects; every try is a fresh process, so one out-of-memory failure never poisons the next.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))


def check_triton() -> int:
    """Spikes bit-identical and gradients close, Triton against the reference loop, on CUDA."""
    import torch

    from spikingresformer.neurons import multistep_neuron

    failures = 0
    for kind in ("lif", "plif", "if"):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            g = torch.Generator(device="cuda").manual_seed(0)
            x = (torch.randn(4, 8, 64, 17, 17, device="cuda", generator=g) * 1.5 + 0.5).to(dtype)
            w = torch.tensor(0.3, device="cuda") if kind == "plif" else None
            results = []
            for backend in ("reference", "triton"):
                xi = x.clone().requires_grad_()
                wi = w.clone().requires_grad_() if w is not None else None
                s = multistep_neuron(xi, kind, 2.0, wi, 1.0, 0.0, 2.0, backend)
                grads = torch.autograd.grad(s.float().sum(), [xi] + ([wi] if wi is not None else []))
                results.append((s.detach(), grads))
            (s_ref, g_ref), (s_tri, g_tri) = results
            same = torch.equal(s_ref, s_tri)
            gx = ((g_tri[0].float() - g_ref[0].float()).abs().max() / g_ref[0].float().abs().max()).item()
            ok = same and gx < (1e-5 if dtype == torch.float32 else 5e-2)
            failures += not ok
            print(f"triton {kind:4s} {str(dtype):15s} spikes identical={same} grad rel err={gx:.2e} "
                  f"{'OK' if ok else 'FAIL'}", flush=True)
    return 1 if failures else 0


def check_lean() -> int:
    """Lean mode (checkpointing) and spikes as bits give the default's outputs, gradients and buffers
    bit for bit on CUDA (float64, Triton neurons)."""
    import copy

    import torch
    import torch.nn.functional as F

    import spikingresformer as sr

    torch.manual_seed(0)
    base = sr.create_model("spikingresformer_cifar", planes=(32, 64, 128), num_heads=(1, 2, 4), group_size=32)
    base = base.to("cuda", torch.float64).train()
    x = torch.randn(4, 3, 32, 32, device="cuda", dtype=torch.float64) * 2
    y = torch.tensor([1, 2, 3, 4], device="cuda")
    results = {}
    for mode in ("default", "lean", "bits"):
        m = copy.deepcopy(base)
        m.set_grad_checkpointing(mode == "lean")
        m.set_spike_saving(mode == "bits")
        for _ in range(2):
            m.zero_grad()
            out = m(x)
            F.cross_entropy(out, y).backward()
        results[mode] = [out.detach()] + [p.grad for p in m.parameters()] + list(m.buffers())
    failures = 0
    for mode in ("lean", "bits"):
        same = all(torch.equal(a, b) for a, b in zip(results["default"], results[mode]))
        failures += not same
        print(f"{mode}: outputs, gradients and buffers identical to default on CUDA: {same}", flush=True)
    return 1 if failures else 0


def _fits(args: argparse.Namespace, batch: int) -> bool:
    cmd = [sys.executable, os.path.join(HERE, "step.py"), "--device", "cuda", "--model", args.model,
           "--img-size", str(args.img_size), "--T", str(args.T), "--batch-size", str(batch), "--steps", "1",
           "--warmup", "1", "--no-infer", "--json", "/dev/null"]
    if args.official:
        cmd += ["--official", args.official, "--official-python", args.official_python, "--configs", "none",
                "--official-precision", "bf16", "--rounds", "1"]
    else:
        cmd += ["--configs", args.config]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return proc.returncode == 0 and "ERROR" not in proc.stdout and "out of memory" not in proc.stdout.lower()


def max_batch(args: argparse.Namespace) -> int:
    """Largest batch whose training step fits, by doubling then bisection."""
    lo, hi = 0, args.start
    while _fits(args, hi):
        lo, hi = hi, hi * 2
        if hi > args.limit:
            break
    while hi - lo > max(1, lo // 16):
        mid = (lo + hi) // 2
        if _fits(args, mid):
            lo = mid
        else:
            hi = mid
    who = "official" if args.official else args.config
    print(json.dumps({"who": who, "model": args.model, "img_size": args.img_size, "T": args.T, "max_batch": lo}))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("triton", "lean", "max-batch"))
    p.add_argument("--model", default="spikingresformer_s")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--config", default="triton:bf16", help="our configuration (step.py syntax)")
    p.add_argument("--official", default=None, help="official checkout (measure it instead of ours)")
    p.add_argument("--official-python", default=sys.executable)
    p.add_argument("--start", type=int, default=32)
    p.add_argument("--limit", type=int, default=4096)
    args = p.parse_args(argv)
    return {"triton": check_triton, "lean": check_lean}.get(args.what, lambda: max_batch(args))()


if __name__ == "__main__":
    sys.exit(main())
