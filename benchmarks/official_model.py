"""Build the official SpikingResformer release's model for ``benchmarks/step.py --official``.

This module runs inside the *official* environment (a Python with spikingjelly 0.0.0.0.14, timm
and the same torch as ours); it never imports ``spikingresformer``. The official code is a checkout
of its public repository that the user provides; nothing of it is copied here and its files are
never edited.

The official neurons (``models/submodules/layers.py``: ``IF``, ``LIF``, ``PLIF``) ask spikingjelly
for the ``cupy`` backend in their constructors, which needs CUDA and CuPy. On a CPU (or without
CuPy) we substitute spikingjelly's own ``torch`` backend while the model is being built, by
wrapping the constructors of spikingjelly's neuron classes for the duration of the build only; the
neuron maths is spikingjelly's either way. Between steps the neuron states are reset with
``spikingjelly.activation_based.functional.reset_net``, as the official training loop does.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List

#: spikingjelly neuron classes that the official IF / LIF / PLIF derive from.
SPIKINGJELLY_NEURONS = ("IFNode", "LIFNode", "ParametricLIFNode")

#: The spikingjelly release the official code was written against.
EXPECTED_SPIKINGJELLY = "0.0.0.0.14"

#: Files of the official checkout that define the model (hashed to identify the code measured).
MODEL_FILES = ("models/spikingresformer.py", "models/submodules/layers.py")

_PACKAGE = "official_spikingresformer_models"


def check_checkout(official_dir: str) -> None:
    """Raise ``ValueError`` unless ``official_dir`` looks like a checkout of the official repository."""
    missing = [f for f in MODEL_FILES if not os.path.isfile(os.path.join(official_dir, f))]
    if missing:
        raise ValueError(
            f"--official expects a checkout of the official SpikingResformer repository "
            f"(with {', '.join(MODEL_FILES)}); {official_dir!r} lacks {', '.join(missing)}"
        )


def code_digest(official_dir: str) -> str:
    """Short SHA-256 over the official model files, so a result names the code it measured."""
    h = hashlib.sha256()
    for name in MODEL_FILES:
        with open(os.path.join(official_dir, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


def choose_backend(requested: str, device: str) -> str:
    """The spikingjelly backend for the official neurons: ``cupy`` only on CUDA with CuPy installed.

    ``requested`` is ``auto``, ``torch`` or ``cupy``; asking for ``cupy`` where it cannot run is an error.
    """
    if requested not in ("auto", "torch", "cupy"):
        raise ValueError(f"official neuron backend must be auto, torch or cupy, got {requested!r}")
    has_cupy = importlib.util.find_spec("cupy") is not None
    on_cuda = device.startswith("cuda")
    if requested == "cupy" and not (has_cupy and on_cuda):
        raise ValueError(
            f"the cupy backend needs a CUDA device and CuPy; device is {device!r}, "
            f"CuPy {'installed' if has_cupy else 'not installed'}"
        )
    if requested == "auto":
        return "cupy" if (has_cupy and on_cuda) else "torch"
    return requested


@contextlib.contextmanager
def neuron_backend(backend: str) -> Iterator[List[str]]:
    """While active, spikingjelly neurons built with a ``backend=`` keyword get ``backend`` instead.

    Yields a list that records the backends the constructors were asked for (to prove the patch
    applied). The original constructors are restored on exit.
    """
    from spikingjelly.activation_based import neuron

    asked: List[str] = []
    originals: Dict[str, Callable[..., None]] = {}

    def wrap(orig: Callable[..., None]) -> Callable[..., None]:
        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            if "backend" in kwargs:
                asked.append(kwargs["backend"])
                kwargs["backend"] = backend
            orig(self, *args, **kwargs)

        return init

    for name in SPIKINGJELLY_NEURONS:
        cls = getattr(neuron, name)
        originals[name] = cls.__init__
        cls.__init__ = wrap(cls.__init__)
    try:
        yield asked
    finally:
        for name, orig in originals.items():
            getattr(neuron, name).__init__ = orig


def import_official(official_dir: str) -> Any:
    """Import the official ``models/spikingresformer.py`` under a private package name."""
    check_checkout(official_dir)
    pkg_dir = os.path.join(os.path.abspath(official_dir), "models")
    package = f"{_PACKAGE}_{hashlib.sha256(pkg_dir.encode()).hexdigest()[:8]}"  # one per checkout
    module_name = f"{package}.spikingresformer"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(
        package, os.path.join(pkg_dir, "__init__.py"), submodule_search_locations=[pkg_dir]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the official models package from {pkg_dir}")
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[package] = pkg
    spec.loader.exec_module(pkg)
    spec = importlib.util.spec_from_file_location(module_name, os.path.join(pkg_dir, "spikingresformer.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = mod
    spec.loader.exec_module(mod)
    return mod


@dataclass
class OfficialModel:
    """The official network and what the benchmark needs to drive it like the official loop."""

    model: Any
    in_chans: int
    backend: str
    info: Dict[str, Any] = field(default_factory=dict)

    def logits(self, x: Any) -> Any:
        """Time-averaged logits ``[B, classes]``, as the official loss (``output.mean(0)``) sees them."""
        return self.model(x).mean(0)

    def reset(self) -> None:
        """Reset every neuron's state, as the official code does after each batch."""
        from spikingjelly.activation_based import functional

        functional.reset_net(self.model)


def build_official(official_dir: str, variant: str, T: int, num_classes: int, img_size: int,
                   backend: str = "auto", device: str = "cpu") -> OfficialModel:
    """Build the official ``variant`` with the official constructor arguments (``T``, classes, size)."""
    import importlib.metadata

    mod = import_official(official_dir)
    factory = getattr(mod, variant, None)
    if factory is None or not callable(factory):
        raise ValueError(f"the official code has no model {variant!r}")
    chosen = choose_backend(backend, device)
    with neuron_backend(chosen) as asked:
        model = factory(T=T, num_classes=num_classes, img_size=img_size)
    from spikingjelly.activation_based import neuron

    nodes = [m for m in model.modules() if isinstance(m, neuron.BaseNode)]
    wrong = sorted({m.backend for m in nodes if m.backend != chosen})
    if not nodes or wrong or len(asked) != len(nodes):
        raise RuntimeError(
            f"official neuron backend patch did not apply: {len(nodes)} neurons, {len(asked)} "
            f"constructor calls seen, backends other than {chosen!r}: {wrong}"
        )
    first_conv = next(m for m in model.modules() if hasattr(m, "in_channels"))
    try:
        sj_version = importlib.metadata.version("spikingjelly")
    except importlib.metadata.PackageNotFoundError:
        sj_version = "unknown"
    info = {
        "official_code_sha256": code_digest(official_dir),
        "spikingjelly": sj_version,
        "spikingjelly_expected": sj_version == EXPECTED_SPIKINGJELLY,
        "neurons": len(nodes),
        "neuron_backend_asked": sorted(set(asked)),
        "neuron_backend_used": chosen,
    }
    return OfficialModel(model=model.to(device), in_chans=int(first_conv.in_channels), backend=chosen, info=info)
