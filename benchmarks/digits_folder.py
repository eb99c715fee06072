"""Write scikit-learn's digits as an ``image-folder`` tree of grayscale PNGs (offline; 1,437 train / 360 val).

    PYTHONPATH=src python benchmarks/digits_folder.py data/digits-folder --img-size 28
    spikingresformer train -c configs/image_folder_small.yaml --data-root data/digits-folder
"""

from __future__ import annotations

import argparse
from typing import List, Optional

from spikingresformer.data.digits import write_digits_folder


def main(argv: Optional[List[str]] = None) -> int:
    """Write ``<root>/train/<digit>/*.png`` and ``<root>/val/<digit>/*.png``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="folder to write")
    p.add_argument("--img-size", type=int, default=28, help="side of the written images (default 28)")
    args = p.parse_args(argv)
    root = write_digits_folder(args.root, args.img_size)
    print(f"wrote {root}/train and {root}/val")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
