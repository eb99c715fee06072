"""The ``spikingresformer`` command: ``train``, ``evaluate``, ``energy``, ``export``, ``predict`` and ``convert``.

Examples::

    spikingresformer train -c configs/digits.yaml
    spikingresformer train -c configs/cifar10.yaml --data-root /data/cifar --epochs 10
    spikingresformer train -c configs/cifar10.yaml --data-root /data/cifar --resume auto
    torchrun --nproc-per-node 8 -m spikingresformer train -c configs/imagenet_ti.yaml --data-root /data/imagenet
    spikingresformer evaluate --model spikingresformer_cifar --checkpoint official.pth -c configs/cifar10.yaml
    spikingresformer energy --model spikingresformer_ti --img-size 224
    spikingresformer export --model spikingresformer_cifar --checkpoint ckpt.pth --format onnx --output m.onnx
    spikingresformer predict runs/digits-demo digit.png another.png
    spikingresformer export runs/digits-demo --output digits.onnx
    spikingresformer evaluate --checkpoint runs/digits-demo
    spikingresformer convert official.pth --model spikingresformer_s --output models/s

A run folder, a model folder (``config.json`` + ``model.safetensors``) or a weight file that carries
its description rebuilds its model by itself wherever a checkpoint is taken; flags still override.

Exit codes: 0 success; 1 a bug (its traceback is shown); 2 an expected failure (bad recipe, data set
not found, damaged event file or checkpoint, folder in use, disk full, divergence: the types in
``training.errors.EXPECTED_ERRORS``), reported in one line; 143 stopped by SIGTERM after saving ``last.pth``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["main", "EXIT_ERROR", "EXIT_SIGTERM"]

EXIT_ERROR = 2
EXIT_SIGTERM = 128 + 15

#: name -> (set-up of its parser, what it runs). A new subcommand is one more entry.
Command = Tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
#: The commands that take recipe keys as ``--key value`` (``args.overrides``); the others refuse extra arguments.
_RECIPE_COMMANDS = ("train", "evaluate")


def _lazy(module: str, name: str) -> Callable:
    """``module.name``, imported when it is first called."""
    return lambda *args: getattr(importlib.import_module(module, __package__), name)(*args)


def _recipe_parser(p: argparse.ArgumentParser) -> None:
    from .training.recipe import recipe_help

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = (p.description or "") + "\n\nRecipe keys:\n" + recipe_help()
    p.add_argument("-c", "--config", help="YAML recipe (configs/*.yaml)")


def _train_parser(p: argparse.ArgumentParser) -> None:
    p.description = ("Train (and evaluate) a model as a YAML recipe says. Any recipe key can be overridden with "
                     "--key value (dashes or underscores); the merged recipe is saved as <output>/recipe.yaml. "
                     "Run folders, resuming and locking: docs/training.md.")
    _recipe_parser(p)


def _evaluate_parser(p: argparse.ArgumentParser) -> None:
    p.description = ("Evaluate a model on the evaluation split of a data set and write the metrics as JSON. "
                     "Recipe keys (from -c and/or --key value) choose the data and the model.")
    _recipe_parser(p)
    p.add_argument("--checkpoint", help="weights: official .pth, our checkpoints, or .safetensors; a run folder or "
                   "a described weight file alone also brings its model and data settings (no -c needed)")
    p.add_argument("--json", dest="json_path", help="where to write the metrics (default <output>/eval.json)")


def _run_train(args: argparse.Namespace) -> int:
    from .training import load_recipe, parse_overrides, run_training

    run_training(load_recipe(args.config, parse_overrides(args.overrides)))
    return 0


def _described(checkpoint: Optional[str]):
    """The :class:`~.hub.ModelSource` of a checkpoint that describes its model, else None."""
    from .hub import NoModelDescription, resolve_source

    if not checkpoint:
        return None
    try:
        return resolve_source(checkpoint)
    except NoModelDescription:
        return None


def _carried_recipe(src) -> Dict[str, Any]:
    """The training recipe that a weight file carries, less what only training uses."""
    from .training import Recipe

    base = {k: v for k, v in src.recipe.items()
            if k in Recipe.__dataclass_fields__ and k not in ("resume", "overwrite", "transfer")}
    return {**base, "output": str(src.folder)}


def _run_evaluate(args: argparse.Namespace) -> int:
    from .training import load_recipe, parse_overrides, run_evaluation

    overrides = parse_overrides(args.overrides)
    src = _described(args.checkpoint)
    checkpoint = str(src.weights) if src is not None else args.checkpoint
    if src is not None and src.recipe is not None and not args.config:
        recipe = load_recipe(None, {**_carried_recipe(src), **overrides})  # flags override the carried recipe
    else:
        recipe = load_recipe(args.config, overrides)
    run_evaluation(recipe, checkpoint, args.json_path)
    return 0


def _run_energy(args: argparse.Namespace) -> int:
    from .energy.cli import run

    src = _described(args.checkpoint)
    if src is not None:  # the model (and, with its recipe, the data) come from the checkpoint
        args.checkpoint = str(src.weights)
        if args.config is None and src.recipe is not None:
            args.config = _carried_recipe(src)
        elif args.config is None:
            args.model_args = model_args = src.config.get("model_args", {})
            args.model = args.model or src.config["architecture"]
            args.T = args.T or model_args.get("T")
            if args.img_size is None and args.input_size is None:
                args.img_size = model_args.get("img_size")
            args.num_classes = args.num_classes or model_args.get("num_classes")
    return int(run(args) or 0)


def _convert_parser(p: argparse.ArgumentParser) -> None:
    p.description = ("Turn an official checkpoint (or any bare state dict) into a model folder: config.json and "
                     "model.safetensors, loadable with spikingresformer.load_model, timm's local-dir: and hf-hub:.")
    p.add_argument("checkpoint", help="official .pth / .pth.tar, or a .safetensors state dict")
    p.add_argument("--model", required=True, help="the variant the weights belong to, e.g. spikingresformer_s")
    p.add_argument("--output", required=True, help="model folder to write")
    p.add_argument("--T", type=int, help="time steps (default: the variant's recipe)")
    p.add_argument("--img-size", type=int, help="input side in pixels (default: the variant's)")
    p.add_argument("--class-names", help="a text file with one class name per line (index order)")


def _run_convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .hub import convert_checkpoint

    names = None
    if args.class_names:
        names = [line.strip() for line in Path(args.class_names).read_text().splitlines() if line.strip()]
    out = convert_checkpoint(args.checkpoint, args.model, args.output, T=args.T, img_size=args.img_size,
                             class_names=names)
    print(f"wrote {out}/config.json and {out}/model.safetensors; load with spikingresformer.load_model({str(out)!r}) "
          f"or timm.create_model('local-dir:{out}', pretrained=True)")
    return 0


COMMANDS: Dict[str, Tuple[str, Command]] = {
    "train": ("train a model from a YAML recipe", (_train_parser, _run_train)),
    "evaluate": ("evaluate a checkpoint (official ones too)", (_evaluate_parser, _run_evaluate)),
    "energy": ("energy and firing-rate report of a model", (_lazy(".energy.cli", "add_arguments"), _run_energy)),
    "export": ("export a model to ONNX or a torch.export archive",
               (_lazy(".export", "add_arguments"), _lazy(".export", "run"))),
    "predict": ("classify image files with a trained model",
                (_lazy(".predict", "add_arguments"), _lazy(".predict", "run"))),
    "convert": ("turn an official checkpoint into a model folder (config.json + model.safetensors)",
                (_convert_parser, _run_convert)),
}


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the console script and of ``python -m spikingresformer``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="spikingresformer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, (setup, _)) in COMMANDS.items():
        setup(sub.add_parser(name, help=help_text))
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in _RECIPE_COMMANDS:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    args.overrides = rest

    from .training.errors import EXPECTED_ERRORS, RunInterrupted

    try:
        return int(COMMANDS[args.command][1][1](args) or 0)
    except RunInterrupted as e:
        print(f"spikingresformer {args.command}: {e}", file=sys.stderr)
        return EXIT_SIGTERM
    except (*EXPECTED_ERRORS, OSError) as e:  # anything else is a bug: its traceback is shown (exit code 1)
        # OSError: a named file missing or unreadable, a write refused (disk full, permissions)
        text = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.filename else str(e)
        print(f"spikingresformer {args.command}: error: {' '.join(text.splitlines())}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
