"""``spikingresformer energy``: per-layer MACs, SOPs, firing rates and energy of a model on a batch.

Options and output files: ``docs/energy.md``; a recipe (``-c``) gives the defaults of its keys' flags.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from .counting import analyze, model_mode
from .report import E_AC_PJ, E_MAC_PJ, EnergyReport, render_table, summarize

__all__ = ["add_arguments", "apply_recipe", "run", "main", "build_inputs", "calibrate_batchnorm", "write_outputs"]

SYNTHETIC = ("random", "zeros", "ones")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``energy`` subcommand's options to ``parser``."""
    parser.add_argument("-c", "--config", default=None,
                        help="YAML recipe (configs/*.yaml): its model, T, img_size, num_classes, dataset and "
                             "data_root become the defaults of the matching flags")
    parser.add_argument("--model", default=None, help="variant name, e.g. spikingresformer_ti (or from -c)")
    parser.add_argument("--checkpoint", default=None, help="official or package checkpoint to load")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--input-size", nargs=3, type=int, metavar=("C", "H", "W"), default=None,
                      help="input channels and spatial size (default: the variant's)")
    size.add_argument("--img-size", type=int, default=None, help="square input side (default: the variant's)")
    parser.add_argument("--T", type=int, default=None, help="time steps (default: the variant's recipe)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="images per batch (default 1; a recipe's batch_size is for training, not used)")
    parser.add_argument("--batches", type=int, default=1, help="batches to average over (dataset input)")
    parser.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: variant/dataset)")
    parser.add_argument("--dataset", "--data", dest="data", default=None,
                        help="input: a dataset name (e.g. digits; evaluation split) or synthetic "
                             f"{'/'.join(SYNTHETIC)} (default random, or the recipe's dataset)")
    parser.add_argument("--data-root", default=None, help="dataset folder, for datasets that need one")
    parser.add_argument("--event", action="store_true",
                        help="synthetic input as [B, T, C, H, W] event frames (default for *_dvsg)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the synthetic input and of the fresh weights (so runs repeat exactly)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--e-mac-pj", type=float, default=E_MAC_PJ, help="energy per MAC in pJ (default 4.6)")
    parser.add_argument("--e-ac-pj", type=float, default=E_AC_PJ, help="energy per addition in pJ (default 0.9)")
    parser.add_argument("--calibrate-bn", action="store_true",
                        help="re-estimate BatchNorm statistics (and DSSA firing rates) on the input batches "
                             "before counting; for fresh weights, which barely spike with default statistics")
    parser.add_argument("--output", default=None, help="folder for JSON, CSV and PNG files")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG charts")
    parser.add_argument("--crosscheck", action="store_true",
                        help="also count with SpikingJelly 2.0's op_counter and compare per layer "
                             "(needs: pip install --no-deps 'spikingjelly==2.0.*' && pip install loguru)")


#: flags that are recipe keys: flag destination -> recipe key
RECIPE_KEYS = {"model": "model", "T": "T", "img_size": "img_size", "num_classes": "num_classes",
               "data": "dataset", "data_root": "data_root"}


def apply_recipe(args: argparse.Namespace) -> Optional[object]:
    """Fill the recipe-key flags left unset from ``--config`` (a file, or the dict a weight file carries)."""
    recipe = None
    if getattr(args, "config", None):
        from ..training.recipe import load_recipe

        recipe = load_recipe(None, args.config) if isinstance(args.config, dict) else load_recipe(args.config)
        for dest, key in RECIPE_KEYS.items():
            if getattr(args, dest, None) is None and not (dest == "img_size" and args.input_size is not None):
                setattr(args, dest, getattr(recipe, key))
    if args.data is None:
        args.data = "random"
    if not args.model:
        raise ValueError("no model given: pass --model NAME or a recipe with -c")
    return recipe


def build_inputs(args: argparse.Namespace, recipe: Optional[object] = None) -> Tuple[List[torch.Tensor], dict]:
    """Input batches and the model options they imply (``in_chans``, ``num_classes``, ``T``, ``img_size``)."""
    from ..model.spikingresformer import DEFAULT_T, check_variant, default_cfgs

    check_variant(args.model)
    cfg = default_cfgs[args.model]  # the variant's input size
    c, h, w = cfg["input_size"] if isinstance(cfg, dict) else cfg.default.input_size
    if args.input_size is not None:
        c, h, w = args.input_size
    elif args.img_size is not None:
        h = w = args.img_size
    T = args.T or DEFAULT_T[args.model]
    # the constructor arguments of a recipe, or of a model folder's config.json
    opts = dict(getattr(recipe, "model_args", None) or getattr(args, "model_args", None) or {})
    opts.update(T=T, img_size=h, in_chans=c)
    if args.num_classes is not None:
        opts["num_classes"] = args.num_classes
    if args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")

    if args.data in SYNTHETIC:
        event = args.event or args.model.endswith("_dvsg")
        g = torch.Generator().manual_seed(args.seed)
        shape = (args.batch_size, T, c, h, w) if event else (args.batch_size, c, h, w)
        if args.data != "random":
            x = torch.full(shape, 1.0 if args.data == "ones" else 0.0)
        elif event:
            x = torch.poisson(torch.full(shape, 0.2), generator=g)  # sparse per-pixel event counts
        else:
            x = torch.randn(shape, generator=g)  # a normalised image's statistics
        return [x], opts

    from torch.utils.data import DataLoader

    from ..data import build_dataset, dataset_options

    if h != w:
        raise ValueError("dataset input needs a square size (--img-size)")
    options: dict = {}
    if recipe is not None:  # the recipe's data settings, as training passes them to the data set
        from ..training.builders import data_options

        options = data_options(recipe)  # type: ignore[arg-type]
    options.update(img_size=h, T=T, augment=False)
    if "dvs_augment" in dataset_options(args.data):
        options["dvs_augment"] = False
    dataset, info = build_dataset(args.data, args.data_root, train=False, **options)
    opts["in_chans"] = info.in_chans
    opts.setdefault("num_classes", info.num_classes)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False)
    batches = [b[0] if isinstance(b, (tuple, list)) else b for b in itertools.islice(loader, args.batches)]
    if info.event:
        opts["T"] = int(batches[0].shape[1])
    return batches, opts


def calibrate_batchnorm(model: torch.nn.Module, batches: List[torch.Tensor]) -> None:
    """Replace BatchNorm running statistics (and a fresh model's DSSA firing rates) by their average over
    train-mode passes on ``batches``, as the fixtures' "statistics re-estimated" step does."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    device = next(model.parameters()).device
    try:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the passes
        with model_mode(model, True):
            for x in batches:
                model(x.to(device))
    finally:
        for bn, mom in zip(bns, momenta):
            bn.momentum = mom


def write_outputs(report: EnergyReport, table: str, out: Path, plots: bool, check=None) -> List[Path]:
    """Write the report's files into ``out`` (each one atomically); returns their paths."""
    from ..fileio import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    files = [out / f for f in ("energy.json", "layers.csv", "neurons.csv", "energy_models.csv", "table.txt")]
    report.to_json(files[0])
    report.write_csv(files[1], files[2], files[3])
    atomic_write_bytes(files[4], (table + "\n").encode())
    if check is not None:
        files.append(atomic_write_bytes(out / "crosscheck.json", (json.dumps(check.to_dict(), indent=2) + "\n").encode()))
        files.append(atomic_write_bytes(out / "crosscheck.txt", (check.render() + "\n").encode()))
    if plots:
        from .plots import plot_energy_models, plot_firing_rates, plot_memory_per_layer, plot_sops_per_layer

        files.append(plot_firing_rates(report, out / "firing_rates.png"))
        files.append(plot_sops_per_layer(report, out / "sops_per_layer.png"))
        files.append(plot_energy_models(report, out / "energy_models.png"))
        files.append(plot_memory_per_layer(report, out / "memory_per_layer.png"))
    return files


def run(args: argparse.Namespace) -> int:
    """Execute the ``energy`` subcommand; returns the process exit status."""
    import spikingresformer

    try:
        recipe = apply_recipe(args)
        batches, opts = build_inputs(args, recipe)
    except (ValueError, FileNotFoundError) as e:  # RecipeError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)  # fresh weights (no --checkpoint) are then the same on every run
    model = spikingresformer.create_model(args.model, **opts)
    if args.checkpoint:
        try:
            spikingresformer.load_checkpoint(model, args.checkpoint)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: cannot load {args.checkpoint}: {e}", file=sys.stderr)
            return 2
    model.to(device)
    if args.calibrate_bn:
        calibrate_batchnorm(model, batches)
    try:
        report = analyze(model, batches, e_mac_pj=args.e_mac_pj, e_ac_pj=args.e_ac_pj, T=opts["T"],
                         model_name=args.model)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    check = None
    if args.crosscheck:
        from .sj_crosscheck import crosscheck

        try:
            check = crosscheck(model, batches[0], T=opts["T"])
        except ImportError as e:  # SpikingJelly 2.0 is not installed; the message says how to install it
            print(f"error: --crosscheck: {e}", file=sys.stderr)
            return 2
    table = render_table(report) + ("" if check is None else "\n\n" + check.render())
    print(f"{table}\n\n{summarize(report)}")
    if report.mean_firing_rate < 1e-3 and not args.checkpoint and not args.calibrate_bn:
        print("note: fresh weights with default BatchNorm statistics barely spike in eval mode; "
              "add --calibrate-bn to re-estimate the statistics on the input first")
    if args.output:
        for f in write_outputs(report, table, Path(args.output), plots=not args.no_plots, check=check):
            print(f"wrote {f}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Standalone entry point: ``python -m spikingresformer.energy.cli --model ...``."""
    parser = argparse.ArgumentParser(prog="spikingresformer energy", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
