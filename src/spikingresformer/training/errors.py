"""Expected ways a run can end early, each with a message that says what happened and what to do."""

from __future__ import annotations

__all__ = ["RunError", "DivergedError", "RunInterrupted"]


class RunError(RuntimeError):
    """A run cannot start or continue for a reason the user can act on (folder in use, disk full, ...)."""


class DivergedError(RunError):
    """The loss, the evaluation loss or the weights became non-finite; the message names epoch and step."""


class RunInterrupted(Exception):
    """The run was asked to stop (SIGTERM); it finished the current step and saved ``last.pth``."""
