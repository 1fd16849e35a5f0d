"""Exceptions a user can cause. The CLI prints their message on one line and exits with code 2."""

from __future__ import annotations


class QegraphError(Exception):
    """Base class for errors caused by user input (files, modules, configs)."""


class UnsupportedOpError(QegraphError):
    """The traced forward uses a module or op that the converter does not understand."""


class CheckpointError(QegraphError):
    """A checkpoint file cannot be read safely, is truncated, or does not match the architecture."""


class NonFiniteError(QegraphError):
    """A parameter contains NaN or inf values."""
