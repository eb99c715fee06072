"""Errors and warnings of the data sets: a missing data folder, a corrupt event file, a bad option, a bad cache entry.

Every error can also be built from its message alone, as PyTorch re-raises a data-loading worker's
exception (``type(e)(formatted traceback)``); the worker's traceback then goes to
:attr:`DataError.worker_traceback` and the original one-line message stays the message.
"""

from __future__ import annotations

import os
from typing import Optional, Union

__all__ = ["DataError", "DataOptionError", "DatasetNotFoundError", "EventFileError", "ImageFileError",
           "FrameCacheWarning"]

_WORKER_PREFIX = "Caught "  # how torch.utils.data starts the text of a re-raised worker exception


class DataError(Exception):
    """Base of the data errors a user can act on (the ``train`` command reports them in one line)."""

    #: The data-loading worker's traceback when the error was raised in a worker, else None.
    worker_traceback: Optional[str] = None

    def __init__(self, message: str) -> None:
        super().__init__(self._from_worker(message))

    def _from_worker(self, message: str) -> str:
        """``message`` itself, or, for a worker's re-raised traceback, the original message it ends with."""
        cls = type(self)
        marker = f"\n{cls.__module__}.{cls.__qualname__}: "  # the last line traceback.format_exception writes
        at = message.rfind(marker)
        if not message.startswith(_WORKER_PREFIX) or at < 0:
            return message
        self.worker_traceback = message
        return "in a data-loading worker: " + message[at + len(marker):].rstrip("\n")


class DataOptionError(DataError, ValueError):
    """A data set was asked for with an option it cannot use or a value it cannot take."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A data folder is missing or incomplete; the message shows the expected layout and the source.

    Built as ``DatasetNotFoundError(dataset, root[, problem, layout, source])``, or from the finished message alone.
    """

    def __init__(self, dataset: str, root: Union[str, os.PathLike, None] = None, problem: Optional[str] = None,
                 layout: str = "", source: str = ""):
        if (root, problem, layout, source) == (None, None, "", ""):  # one argument: the whole message
            super().__init__(dataset)
            self.dataset, self.root, self.problem = "", None, str(self.args[0])
            return
        self.dataset = dataset
        self.root = None if root is None else str(root)
        self.problem = problem = problem or "data set not found"
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


class EventFileError(DataError, ValueError):
    """An event recording or its label file is corrupt; the message names the file and the problem.

    Built as ``EventFileError(path, problem)``, or from the finished message alone.
    """

    def __init__(self, path: Union[str, os.PathLike], problem: Optional[str] = None):
        if problem is None:  # one argument: the whole message
            super().__init__(str(path))
            self.path, self.problem = "", str(self.args[0])
            return
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ImageFileError(DataError, ValueError):
    """An image file is missing or cannot be decoded; the message names the file and the problem."""


class FrameCacheWarning(UserWarning):
    """A frame-cache entry was unreadable or not what the data set expects; it is rebuilt from its source."""
