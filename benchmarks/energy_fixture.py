"""Energy report of a golden fixture's checkpoint on its own test input, with the SpikingJelly cross-check.

    PYTHONPATH=src python benchmarks/energy_fixture.py /work/shared/fixtures/official_cifar.pt --output runs/energy_cifar

Writes what ``spikingresformer energy --output`` writes (table, JSON, CSV, charts) plus
``crosscheck.json`` / ``crosscheck.txt`` when SpikingJelly 2.0 is installed. The fixture holds a
checkpoint and an input batch as tensors, which the command line cannot take, hence this script.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

import torch

import spikingresformer
from spikingresformer.energy import analyze, render_table, spikingjelly_available
from spikingresformer.energy.cli import write_outputs


def main(argv: Optional[List[str]] = None) -> int:
    """Count the fixture's model on its ``test_input`` and write the report into ``--output``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("fixture", help="official_cifar.pt, official_dvsg.pt or their _f64 variants")
    p.add_argument("--output", required=True, help="folder for the report files")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    fx = torch.load(args.fixture, weights_only=True)
    model = spikingresformer.create_model(fx["model_name"], num_classes=fx["num_classes"], T=fx["T"],
                                          img_size=fx["img_size"])
    spikingresformer.load_checkpoint(model, fx["checkpoint"])
    model.to(fx["test_input"].dtype)  # the ``_f64`` fixtures hold float64 weights and input
    report = analyze(model, fx["test_input"], model_name=fx["model_name"])
    check = None
    if spikingjelly_available():
        from spikingresformer.energy import crosscheck

        check = crosscheck(model, fx["test_input"])
    table = render_table(report) + ("\n\n" + check.render() if check is not None else "")
    print(table)
    for f in write_outputs(report, table, Path(args.output), plots=not args.no_plots, check=check):
        print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
