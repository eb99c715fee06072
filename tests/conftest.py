"""Shared test helpers: the golden fixtures from the official release, and hermetic caches.

Two kinds of golden fixture (see ``shared/fixtures/README.md``):

- ``official_*_f64.pt``: the official code run in float64. Portable: any CPU reproduces them, so the
  strict parity tests (logits, loss, gradients, buffers, SOP counts) use these, with tolerances at
  float64 rounding.
- ``official_*.pt``: float32, recorded on one machine. Float32 convolutions round differently on
  other processors, a membrane within rounding of the threshold flips a spike, and the flip spreads;
  so these prove only what does not depend on the processor (the checkpoint format and key layout,
  and comparisons made inside one process).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

#: the fixtures folder: ``$SPIKINGRESFORMER_FIXTURES``, else ``shared/fixtures`` beside the checkout
FIXTURES = Path(os.environ.get("SPIKINGRESFORMER_FIXTURES",
                               Path(__file__).resolve().parents[2] / "shared" / "fixtures"))

#: neuron backends that run float64 on the CPU (strict parity runs on each of them)
FLOAT64_BACKENDS = ("reference", "fused")

if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Caches go to a temporary folder for the session (subprocesses inherit it through the environment),
# so a test run neither reads a stale cache nor writes to the user's home.
_CACHE_ROOT = Path(tempfile.mkdtemp(prefix="spikingresformer-tests-"))
for _var, _sub in (("SPIKINGRESFORMER_FRAME_CACHE", "frames"), ("SPIKINGRESFORMER_KERNEL_CACHE", "kernels")):
    os.environ[_var] = str(_CACHE_ROOT / _sub)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE_ROOT, ignore_errors=True)


def fixture_path(name: str) -> Path:
    """Path of fixture ``name`` (e.g. ``official_cifar_f64``); skips the test with the reason if it is absent."""
    path = FIXTURES / f"{name}.pt"
    if not path.is_file():
        pytest.skip(f"golden fixture {path} is missing; set SPIKINGRESFORMER_FIXTURES to the fixtures folder")
    return path


def load_fixture(name: str) -> dict:
    """A fresh copy of fixture ``name`` (see :func:`fixture_path`)."""
    return torch.load(fixture_path(name), map_location="cpu", weights_only=True)


@pytest.fixture(scope="session", params=["official_cifar_f64", "official_dvsg_f64"])
def fixture64(request) -> dict:
    """The float64 fixtures (portable; strict parity)."""
    return load_fixture(request.param)


def model_from_fixture(fx: dict, backend: str | None = None, dtype: torch.dtype | None = None):
    """The fixture's variant with its checkpoint loaded, in the fixture's precision unless ``dtype`` is given."""
    import spikingresformer as sr

    dtype = dtype or (torch.float64 if fx.get("dtype") == "float64" else torch.float32)
    m = sr.create_model(fx["model_name"], num_classes=fx["num_classes"], T=fx["T"], img_size=fx["img_size"],
                        neuron_backend=backend).to(dtype)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in fx["checkpoint"]["model"].items()}
    sr.load_checkpoint(m, {"model": state})
    return m


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference over max abs reference value."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
