"""Run timm's own model test suite (``tests/test_models.py``) against our six registered variants.

Give it a checkout of huggingface/pytorch-image-models (a work tree, or a bare git directory such
as the ones ``git clone --bare`` makes); nothing of it is kept here. TorchScript tests are
deselected: TorchScript is in maintenance upstream and not supported by this package.

    python benchmarks/timm_model_tests.py /path/to/pytorch-image-models [-- extra pytest args]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def _test_file(repo: Path, tmp: Path) -> Path:
    if (repo / "tests" / "test_models.py").is_file():
        return repo / "tests" / "test_models.py"
    # a bare repository: take the file from HEAD
    out = tmp / "test_models.py"
    text = subprocess.run(["git", f"--git-dir={repo}", "show", "HEAD:tests/test_models.py"], check=True,
                          capture_output=True, text=True).stdout
    out.write_text(text)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the tests and return pytest's exit code."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("repo", type=Path, help="pytorch-image-models checkout (work tree or bare git directory)")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        test_file = _test_file(args.repo, Path(tmp))
        cmd = [sys.executable, "-m", "pytest", "-p", "spikingresformer", str(test_file), "-k",
               "spikingresformer and not torchscript", "-q", "-rA", "-p", "no:cacheprovider",
               "--rootdir", str(test_file.parent), "-o", "addopts=", *args.pytest_args]
        print(" ".join(cmd), flush=True)
        return subprocess.run(cmd, env=dict(os.environ)).returncode


if __name__ == "__main__":
    sys.exit(main())
