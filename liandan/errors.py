"""Typed errors whose message is meant for the user: what was wrong, with the value, and what to do."""

from __future__ import annotations


class LiandanError(Exception):
    """Base class: the message is shown to the user as it is (UI, CLI), never a traceback."""


class CheckpointError(LiandanError):
    """A model file that cannot be used: unreadable, truncated, of an unsupported kind."""


class FormatError(LiandanError):
    """An artifact (embedding, hypernetwork, LoRA, card) that is malformed or of another family."""


class DatasetError(LiandanError):
    """A dataset folder that gives nothing to train on, or a caption/template problem."""


class ConfigError(LiandanError):
    """A job setting that is out of range or malformed (an lr schedule, a layer structure, ...)."""


class DiskFullError(LiandanError):
    """An output could not be written for lack of disk space; the previous file is intact."""


class TrainingStopped(LiandanError):
    """Training could not go on (NaN loss without a good state to return to, ...)."""
