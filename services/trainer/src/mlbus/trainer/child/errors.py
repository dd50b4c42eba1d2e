"""Failures a job reports as its reason (not crashes of the trainer's own code)."""

from __future__ import annotations


class JobFailed(Exception):
    """The job cannot succeed; the message is the job's FAILED reason."""


class Stopped(BaseException):
    """The child received SIGTERM (StopJob or a limit); raised in the main thread."""
