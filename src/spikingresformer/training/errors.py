"""Expected ways a run can end early, each built from one message that says what happened and what to do."""

from __future__ import annotations

from ..checkpoint import CheckpointError
from ..data.errors import DataError
from ..model.spikingresformer import UnknownModelError

__all__ = ["RecipeError", "RunError", "DivergedError", "RunInterrupted", "EXPECTED_ERRORS"]


class RecipeError(ValueError):
    """A recipe file, key or value is not valid, or does not fit this machine (no CUDA, batch split)."""


class RunError(RuntimeError):
    """A run cannot start or continue for a reason the user can act on (folder in use, disk full, ...)."""


class DivergedError(RunError):
    """The loss, the evaluation loss or the weights became non-finite; the message names epoch and step."""


class RunInterrupted(Exception):
    """The run was asked to stop (SIGTERM); it finished the current step and saved ``last.pth``."""


#: Failures a command reports in one line (exit code 2); anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (RecipeError, RunError, CheckpointError, DataError, UnknownModelError)
