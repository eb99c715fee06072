"""Export every registered variant to ONNX and compare ONNX Runtime with eager PyTorch.

    python benchmarks/export_all.py [--img-size 32] [--T 2] [--fixtures ../shared/fixtures]

Fresh weights for the ImageNet variants (at a small size, to keep it quick), and the official
fixture checkpoints and inputs for cifar and dvsg when ``--fixtures`` is given. Prints, per model,
the export time, the largest relative logit difference and eager/ONNX Runtime inference times.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import spikingresformer as sr
from spikingresformer.export import check_onnx, example_input, export_onnx


def _time(fn, n: int = 3) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def main() -> int:
    """Run the comparison and print one line per model."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--T", type=int, default=2)
    p.add_argument("--fixtures", type=Path, default=None)
    args = p.parse_args()
    import onnxruntime as ort

    cases = []
    for name in sorted(sr.VARIANTS):
        if args.fixtures and name in ("spikingresformer_cifar", "spikingresformer_dvsg"):
            fx = torch.load(args.fixtures / f"official_{name.split('_')[1]}.pt", weights_only=True)
            m = sr.create_model(name, num_classes=fx["num_classes"], T=fx["T"], img_size=fx["img_size"])
            sr.load_checkpoint(m, fx["checkpoint"])
            cases.append((name + " (fixture)", m.eval(), fx["test_input"]))
        else:
            torch.manual_seed(0)
            m = sr.create_model(name, img_size=args.img_size, T=args.T).eval()
            cases.append((name, m, example_input(m, 2, args.img_size, args.T)))
    with tempfile.TemporaryDirectory() as tmp:
        for label, model, x in cases:
            path = Path(tmp) / "m.onnx"
            t = time.perf_counter()
            export_onnx(model, x, path, spike_outputs=True)
            export_s = time.perf_counter() - t
            fid = check_onnx(path, model, x)
            options = ort.SessionOptions()
            options.log_severity_level = 3
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            feed = {session.get_inputs()[0].name: x.numpy()}
            with torch.no_grad():
                eager_s = _time(lambda: model(x))
            ort_s = _time(lambda: session.run(["logits"], feed))
            print(f"{label:34s} input {tuple(x.shape)}  export {export_s:6.1f} s  eager {eager_s:.3f} s  "
                  f"onnxruntime {ort_s:.3f} s\n    {fid.summary()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
