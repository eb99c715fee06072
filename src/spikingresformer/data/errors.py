"""Errors and warnings of the data sets: a missing data folder, a corrupt event file, a bad cache entry."""

from __future__ import annotations

import os
from typing import Optional, Union

__all__ = ["DatasetNotFoundError", "EventFileError", "FrameCacheWarning"]


class DatasetNotFoundError(FileNotFoundError):
    """A data folder is missing or incomplete; the message shows the expected layout and the source."""

    def __init__(self, dataset: str, root: Union[str, os.PathLike, None], problem: str, layout: str,
                 source: Optional[str] = None):
        self.dataset = dataset
        self.root = None if root is None else str(root)
        self.problem = problem
        message = (
            f"{dataset}: {problem}\n"
            f"  root given: {self.root!r}\n"
            f"  expected layout:\n"
            + "".join(f"    {line}\n" for line in layout.strip("\n").splitlines())
            + (f"  the data set is published at {source} (it cannot be downloaded automatically here; "
               f"download and extract it, then point the recipe's data_root at the folder above)" if source else
               "  (point the recipe's data_root at the folder above)")
        )
        super().__init__(message)

    def __str__(self) -> str:  # FileNotFoundError would otherwise print errno-style
        return str(self.args[0])


class EventFileError(ValueError):
    """An event recording or its label file is corrupt; the message names the file and the problem."""

    def __init__(self, path: Union[str, os.PathLike], problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class FrameCacheWarning(UserWarning):
    """A frame-cache entry was unreadable or not what the data set expects; it is rebuilt from its source."""
