"""Time one multi-step LIF layer, forward + backward, per backend (and spikingjelly if available).

Shapes default to ``[4, 16, 256, 32, 32]`` and ``[4, 32, 64, 56, 56]`` (``[T, B, C, H, W]``). Each
measurement runs in a fresh subprocess so that allocator settings (``--malloc``) and peak memory
are its own. spikingjelly runs from other Python interpreters (``--sj-python``, one per version, each
with spikingjelly installed and this package importable), so the project environment stays clean;
there its spikes and gradients are also checked against this package's ``fused`` backend.

Example::

    python benchmarks/neuron.py --reps 5 --sj-python /tmp/sjvenv/bin/python --json neuron.json
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

DEFAULT_SHAPES = "4x16x256x32x32,4x32x64x56x56"


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma list of TxBxCxHxW")
    p.add_argument("--backends", default=None,
                   help="comma list from reference, fused, fused-torch, triton (default: all for the device)")
    p.add_argument("--kind", default="lif", choices=("lif", "plif", "if"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--malloc", default="glibc",
                   help="comma list of glibc/tcmalloc (tcmalloc: preloaded into that subprocess only)")
    p.add_argument("--sj-python", action="append", default=[],
                   help="a Python with spikingjelly installed (repeatable, one per version)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_worker(args: argparse.Namespace, job: Dict[str, Any]) -> Dict[str, Any]:
    """Time one backend on one shape in this process."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = [int(v) for v in job["shape"].split("x")]
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    backend = job["backend"]
    gen = torch.Generator().manual_seed(0)
    x0 = (torch.randn(shape, generator=gen) + 0.8).to(device=device, dtype=dtype)
    grad = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    result: Dict[str, Any] = dict(job)

    if backend.startswith("spikingjelly"):
        import spikingjelly
        from spikingjelly.activation_based import neuron, surrogate

        result["version"] = getattr(spikingjelly, "__version__", None) or _dist_version("spikingjelly")
        kwargs: Dict[str, Any] = dict(tau=2.0, detach_reset=True, step_mode="m",
                                      surrogate_function=surrogate.ATan(alpha=2.0))
        try:
            node = neuron.LIFNode(backend="torch", **kwargs)
        except TypeError:  # spikingjelly 2.x: no backend argument
            node = neuron.LIFNode(**kwargs)
        node = node.to(device)

        def layer(x: "torch.Tensor") -> "torch.Tensor":
            node.reset()
            return node(x)
    else:
        from spikingresformer.neurons import fused, multistep_neuron

        if backend == "fused-torch":
            os.environ[fused.IMPL_ENV_VAR] = "torch"
        name = "fused" if backend == "fused-torch" else backend
        decay: Any = 2.0
        if args.kind == "plif":
            decay = torch.zeros((), device=device, requires_grad=True)

        def layer(x: "torch.Tensor") -> "torch.Tensor":
            return multistep_neuron(x, args.kind, decay, 1.0, 0.0, 2.0, backend=name)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    for i in range(args.warmup + args.reps):
        x = x0.detach().requires_grad_()
        sync()
        t0 = time.perf_counter()
        s = layer(x)
        s.backward(grad)
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
        last_s, last_g = s.detach(), x.grad
        del s, x
    result["fwd_bwd_ms"] = 1e3 * statistics.median(times)
    result["times_ms"] = [1e3 * t for t in times]
    result["peak_rss_mb"] = _peak_rss_mb()
    if device.type == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if backend.startswith("spikingjelly"):
        from spikingresformer.neurons import multistep_neuron

        x = x0.detach().requires_grad_()
        s = multistep_neuron(x, "lif", 2.0, 1.0, 0.0, 2.0, backend="fused")
        s.backward(grad)
        result["spikes_identical_to_fused"] = bool(torch.equal(s.detach(), last_s))
        result["max_grad_diff_vs_fused"] = float((x.grad - last_g).abs().max())
    return result


def _dist_version(name: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def main(argv: Optional[List[str]] = None) -> int:
    """Run each backend x shape x malloc setting in a subprocess; print a table; optionally write JSON."""
    args = build_parser().parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(run_worker(args, json.loads(args.worker))), flush=True)
        return 0
    backends = (args.backends or ("reference,fused,fused-torch,triton" if args.device.startswith("cuda")
                                  else "reference,fused,fused-torch")).split(",")
    passthrough = list(argv if argv is not None else sys.argv[1:])
    jobs = []
    for shape in args.shapes.split(","):
        for malloc in args.malloc.split(","):
            for b in backends:
                jobs.append((sys.executable, dict(shape=shape, backend=b, malloc=malloc)))
            for i, py in enumerate(args.sj_python):
                jobs.append((py, dict(shape=shape, backend=f"spikingjelly[{i}]", malloc=malloc)))
    results = []
    for py, job in jobs:
        env = dict(os.environ)
        if job["malloc"] == "tcmalloc":
            env["LD_PRELOAD"] = " ".join(filter(None, [env.get("LD_PRELOAD"), "libtcmalloc_minimal.so.4"]))
        cmd = [py, os.path.abspath(__file__), *passthrough, "--worker", json.dumps(job)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            r = dict(job, error=(proc.stderr.strip().splitlines() or ["failed"])[-1])
        else:
            r = json.loads(line[len("RESULT "):])
        results.append(r)
        print(f"# {job}: {r.get('fwd_bwd_ms', r.get('error'))}", file=sys.stderr, flush=True)

    print(f"kind={args.kind} dtype={args.dtype} device={args.device}; speed-up against 'reference' "
          f"(same shape and malloc) and against the first spikingjelly row")
    head = f"{'shape':<16} {'malloc':<7} {'backend':<22} {'fwd+bwd ms':>10} {'x ref':>7} {'x sj':>7}  check"
    print(head)
    print("-" * len(head))
    for r in results:
        ref = next((q for q in results if q["shape"] == r["shape"] and q["malloc"] == r["malloc"]
                    and q["backend"] == "reference" and "fwd_bwd_ms" in q), None)
        sj = next((q for q in results if q["shape"] == r["shape"] and q["malloc"] == r["malloc"]
                   and q["backend"].startswith("spikingjelly") and "fwd_bwd_ms" in q), None)
        name = r["backend"] + (f" {r['version']}" if r.get("version") else "")
        if "error" in r:
            print(f"{r['shape']:<16} {r['malloc']:<7} {name:<22} ERROR {r['error'][:60]}")
            continue
        xr = ref["fwd_bwd_ms"] / r["fwd_bwd_ms"] if ref else None
        xs = sj["fwd_bwd_ms"] / r["fwd_bwd_ms"] if sj else None
        check = ""
        if "spikes_identical_to_fused" in r:
            check = f"spikes==fused: {r['spikes_identical_to_fused']}, max|dgrad|={r['max_grad_diff_vs_fused']:.1e}"
        print(f"{r['shape']:<16} {r['malloc']:<7} {name:<22} {r['fwd_bwd_ms']:>10.1f} "
              f"{'-' if xr is None else format(xr, '7.2f'):>7} {'-' if xs is None else format(xs, '7.2f'):>7}  {check}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items() if k != "worker"}, "results": results}, f,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
