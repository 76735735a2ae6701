"""The shared base of the config models: strict and frozen, with errors on key paths.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticUndefined

from stream.config.redact import redact_url

Loc = tuple[str | int, ...]
"""A key path inside the config, e.g. ``("sources", 1, "url")``."""



@dataclass(frozen=True)
class Problem:
    """One config error: where (relative key path), what, and the offending value."""

    path: Loc
    message: str
    value: object = PydanticUndefined


class Problems(ValueError):
    """Raised by `model_validator`s to report errors on specific fields (pydantic would
    otherwise attach a validator's error to the whole model)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = list(problems)


class Strict(BaseModel):
    """Shared base: unknown keys are errors, configs are immutable once validated."""

    # hide_input_in_errors: a raw ValidationError (if one ever escapes) must not print secrets.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # repr()/str() of a config ends up in logs: never print URL credentials.
        for key, value in super().__repr_args__():
            yield key, redact_url(value) if isinstance(value, str) else value
