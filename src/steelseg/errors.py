"""Exceptions that steelseg raises for problems the user can fix.

The CLI prints these as one clear message (no traceback); anything else is a bug.
"""

from __future__ import annotations


class SteelsegError(Exception):
    """Base class: a problem with the user's input, data or configuration."""

    exit_code = 2  # what the CLI exits with after printing the message


class RLEError(SteelsegError, ValueError):
    """A run-length-encoded mask string is malformed or does not fit the image."""


class DataError(SteelsegError):
    """A dataset on disk is missing files, holds bad rows or unreadable images."""


class ConfigError(SteelsegError):
    """A run configuration names an unknown key, value or type."""


class TrainingError(SteelsegError):
    """Training cannot go on sensibly (a non-finite loss, say); the message says what to change."""


class TrainingStopped(SteelsegError):
    """Training was stopped from outside (SIGTERM from a scheduler): the run is not a success, and the
    message says how to resume it. Exit 143 (128 + SIGTERM), as a killed process."""

    exit_code = 143

