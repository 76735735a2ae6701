"""The exception tree of `stream`; every message says what went wrong and what to do next.

    StreamError                 base of everything this package raises on purpose
    ├── ConfigError             a config file or command-line value is invalid
    ├── SourceError             a video source cannot be opened or read
    ├── ProtocolError           a ZeroMQ message is malformed or of an unknown version
    └── ModelError              an IR or checkpoint is missing, malformed or of the wrong shape
        └── CheckpointError     a weights file cannot be read as a ConvNeXt checkpoint

The CLI catches `StreamError`, prints its message on one line and exits non-zero, so a user
never sees a traceback for a mistake they can fix.
"""

from __future__ import annotations


class StreamError(Exception):
    """Base class: an error the user can act on (its message says how)."""


class ConfigError(StreamError):
    """A configuration value is invalid; the message names the key path."""


class SourceError(StreamError):
    """A video source cannot be opened or decoded."""


class ProtocolError(StreamError):
    """A message on the wire is malformed or carries an unsupported version."""


class ModelError(StreamError):
    """A model (IR) is missing, unreadable or not a supported classifier."""


class CheckpointError(ModelError):
    """A weights file is not a readable ConvNeXt checkpoint."""
