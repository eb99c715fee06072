"""Shared test helpers: the golden fixtures from the official release."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(os.environ.get("SPIKINGRESFORMER_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))

if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def load_fixture(name: str) -> dict:
    path = FIXTURES / f"{name}.pt"
    if not path.is_file():
        pytest.fail(f"golden fixture {path} is missing; set SPIKINGRESFORMER_FIXTURES to the fixtures folder")
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="session", params=["official_cifar", "official_dvsg"])
def fixture(request) -> dict:
    return load_fixture(request.param)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference over max abs reference value."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
