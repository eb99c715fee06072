"""The ``spikingresformer`` command: ``train``, ``evaluate``, ``energy`` and ``export``.

Examples::

    spikingresformer train -c configs/digits.yaml
    spikingresformer train -c configs/cifar10.yaml --data-root /data/cifar --epochs 10
    torchrun --nproc-per-node 8 -m spikingresformer train -c configs/imagenet_ti.yaml --data-root /data/imagenet
    spikingresformer evaluate --model spikingresformer_cifar --checkpoint official.pth -c configs/cifar10.yaml
    spikingresformer energy --model spikingresformer_ti --img-size 224
    spikingresformer export --model spikingresformer_cifar --checkpoint ckpt.pth --format onnx --output m.onnx
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

__all__ = ["main"]


def _recipe_command(sub, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """A subcommand that reads a recipe (``-c``) and takes any recipe key as ``--key value``."""
    from .training.recipe import recipe_help

    p = sub.add_parser(name, help=help, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=description + "\n\nRecipe keys:\n" + recipe_help())
    p.add_argument("-c", "--config", help="YAML recipe (configs/*.yaml)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the console script and of ``python -m spikingresformer``."""
    from . import runtime

    runtime.apply_defaults()  # our own command: tune the allocator (a plain import never does)
    parser = argparse.ArgumentParser(prog="spikingresformer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _recipe_command(
        sub, "train", "train a model from a YAML recipe",
        "Train (and evaluate) a model as a YAML recipe says. Any recipe key can be overridden with "
        "--key value (dashes or underscores); the merged recipe is saved as <output>/recipe.yaml.",
    )
    ev = _recipe_command(
        sub, "evaluate", "evaluate a checkpoint (official ones too)",
        "Evaluate a model on the evaluation split of a data set and write the metrics as JSON. "
        "Recipe keys (from -c and/or --key value) choose the data and the model.",
    )
    ev.add_argument("--checkpoint", help="weights: official .pth, our checkpoints, or .safetensors")
    ev.add_argument("--json", dest="json_path", help="where to write the metrics (default <output>/eval.json)")
    energy = sub.add_parser("energy", help="energy and firing-rate report of a model")
    try:
        from .energy.cli import add_arguments as energy_args
    except ImportError:
        energy_args = None
    if energy_args is not None:
        energy_args(energy)
    from . import export as export_cmd

    export_cmd.add_arguments(sub.add_parser("export", help="export a model to ONNX or a torch.export archive"))
    args, rest = parser.parse_known_args(argv)

    from .training.recipe import RecipeError, load_recipe, parse_overrides

    try:
        if args.command == "energy":
            if energy_args is None:
                parser.error("the energy report is not available in this installation")
            if rest:
                parser.error(f"unrecognised arguments: {' '.join(rest)}")
            from .energy.cli import run as energy_run

            return int(energy_run(args) or 0)
        if args.command == "export":
            if rest:
                parser.error(f"unrecognised arguments: {' '.join(rest)}")
            return export_cmd.run(args)
        recipe = load_recipe(args.config, parse_overrides(rest))
        if args.command == "train":
            from .training import run_training

            run_training(recipe)
        else:
            from .training import run_evaluation

            run_evaluation(recipe, args.checkpoint, args.json_path)
    except (RecipeError, FileNotFoundError, ValueError) as e:
        print(f"spikingresformer {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
