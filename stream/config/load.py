"""Reading a config: YAML, `${VAR}` expansion, and errors that name the key path.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from stream.config.models import Loc, Problem, Problems, StreamConfig
from stream.config.redact import redact_url
from stream.errors import ConfigError

# --------------------------------------------------------------------------- errors


def _key_path(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _fields_at(loc: Sequence[str | int]) -> list[str]:
    """Field names of the model that holds the key at `loc` (for "did you mean")."""
    model: type[BaseModel] = StreamConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        if getattr(annotation, "__origin__", None) is list and args:
            annotation = args[0]
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _show(value: object, template: str | None) -> str:
    """A value for an error message: as written in the file, credentials redacted, short."""
    if template is not None:
        text = repr(redact_url(template))
    elif isinstance(value, Mapping):
        keys = ", ".join(str(k) for k in value)
        text = f"a mapping with keys {keys}" if keys else "an empty mapping"
    elif isinstance(value, list | tuple):
        text = f"a list of {len(value)} items"
    elif value is None:
        text = "null"
    elif isinstance(value, str):
        text = repr(redact_url(value))
    else:
        text = redact_url(repr(value))
    # Redact before truncating: a cut could otherwise leave a password without its '@'.
    return text if len(text) <= 80 else text[:77] + "..."


def _from_pydantic(error: Mapping[str, Any]) -> list[Problem]:
    loc: Loc = tuple(error["loc"])
    kind = error["type"]
    value = error.get("input", PydanticUndefined)
    message = str(error["msg"])
    if kind == "value_error":
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, Problems):
            return [Problem(loc + p.path, p.message, p.value) for p in cause.problems]
        message = message.removeprefix("Value error, ")
    elif kind == "missing":
        return [Problem(loc, "required key is missing")]
    elif kind == "extra_forbidden":
        key = str(loc[-1]) if loc else ""
        valid = _fields_at(loc)
        message = "unknown key"
        close = difflib.get_close_matches(key, valid, n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
        elif valid:
            message += f"; valid keys here: {', '.join(valid)}"
    elif kind in ("model_type", "dict_type"):
        message = "expected a mapping of `key: value` lines"
    elif kind == "too_short" and loc == ("sources",):
        message = "at least one source is needed"
    elif kind == "literal_error" and loc == ("version",):
        message = "unsupported config version; this release of stream reads version 1"
    elif kind == "string_type" and isinstance(value, int | float | bool):
        message += "; YAML read this as a number or boolean, put it in quotes"
    return [Problem(loc, message, value)]


def _config_error(
    source_name: str, problems: Sequence[Problem], templates: Mapping[Loc, str]
) -> ConfigError:
    lines = []
    for p in problems:
        line = f"{_key_path(p.path)}: {p.message}"
        if p.value is not PydanticUndefined:
            line += f" (got {_show(p.value, templates.get(p.path))})"
        lines.append(line)
    if len(lines) == 1:
        text = f"{source_name}: {lines[0]}"
    else:
        text = f"{source_name}: {len(lines)} errors:\n" + "\n".join(f"  {x}" for x in lines)
    return ConfigError(redact_url(text))


def _validate(
    data: Mapping[Any, Any], source_name: str, templates: Mapping[Loc, str]
) -> StreamConfig:
    try:
        return StreamConfig.model_validate(data)
    except ValidationError as exc:
        problems = [p for error in exc.errors() for p in _from_pydantic(error)]
        # `from None`: the ValidationError's context would carry raw (secret) values.
        raise _config_error(source_name, problems, templates) from None


def config_from_dict(data: Mapping[Any, Any], source_name: str = "<config>") -> StreamConfig:
    """Validate an already-parsed config (no `${VAR}` expansion).

    Args:
        data: the config as plain dicts/lists/scalars (e.g. built from CLI flags).
        source_name: where it came from, the prefix of error messages.

    Raises:
        ConfigError: listing every problem as `<key path>: <message> (got <value>)`.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source_name}: expected a mapping of keys, got {_show(data, None)}")
    return _validate(data, source_name, {})


# --------------------------------------------------------------------------- loading

# $${ is a literal "${"; ${NAME} / ${NAME:-default}; any other "${" is a mistake.
_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")


def _expand(
    node: object,
    loc: Loc,
    env: Mapping[str, str],
    problems: list[Problem],
    templates: dict[Loc, str],
    skip: frozenset[Loc] = frozenset(),
) -> object:
    """Expand `${VAR}` in every string of `node` except at the key paths in `skip` (kept
    as written); record problems and the raw templates."""
    if isinstance(node, dict):
        return {k: _expand(v, (*loc, str(k)), env, problems, templates, skip)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, (*loc, i), env, problems, templates, skip)
                for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node or loc in skip:
        return node

    def _substitute(match: re.Match[str]) -> str:
        text = match[0]
        if text == "$${":
            return "${"
        name, default = match[1], match[2]
        if name is None:
            problems.append(
                Problem(
                    loc,
                    "malformed ${...}: write ${NAME} or ${NAME:-default}, or $${ for a literal ${",
                    node,
                )
            )
            return text
        found = env.get(name)
        if default is not None and not found:  # shell semantics: unset or empty -> default
            return default
        if found is None:
            problems.append(
                Problem(
                    loc,
                    f"environment variable {name} is not set; set it or write ${{{name}:-default}}",
                    node,
                )
            )
            return text
        return found

    templates[loc] = node
    return _REFERENCE.sub(_substitute, node)


def expand_env(
    value: str, where: str, source_name: str, env: Mapping[str, str] | None = None
) -> str:
    """Expand `${VAR}` in one string exactly as the YAML loader does (e.g. a `--source` flag).

    Args:
        value: the text, e.g. `rtsp://${CAM_USER}:${CAM_PASS}@cam/1`.
        where: what the text is, the key of error messages (e.g. `--source`).
        source_name: where it came from, the prefix of error messages (e.g. `command line`).
        env: the variables; None = `os.environ`, read now.

    Returns:
        The expanded text.

    Raises:
        ConfigError: a variable is not set or a `${` is malformed; the message names the
            variable and shows the template (credentials redacted), never a value.
    """
    problems: list[Problem] = []
    templates: dict[Loc, str] = {}
    expanded = _expand(value, (where,), os.environ if env is None else env, problems, templates)
    if problems:
        raise _config_error(source_name, problems, templates)
    assert isinstance(expanded, str)
    return expanded


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line)
            except TypeError:
                continue  # unhashable key: SafeLoader reports it below
            if first != key_node.start_mark.line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {first + 1})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        context = f" ({exc.context})" if exc.context else ""
        return f"{where}: {exc.problem}{context}"
    return " ".join(str(exc).split())


def _unused_urls(data: Mapping[Any, Any], urls: Collection[str] | None) -> frozenset[Loc]:
    """Key paths of the `sources[].url` a role does not use (left unexpanded)."""
    sources = data.get("sources")
    if urls is None or not isinstance(sources, list):
        return frozenset()
    return frozenset(("sources", i, "url") for i, src in enumerate(sources)
                     if not (isinstance(src, Mapping) and str(src.get("id")) in urls))


def load_config(path: str | Path, env: Mapping[str, str] | None = None,
                urls: Collection[str] | None = None) -> StreamConfig:
    """Read, expand and validate a YAML config file.

    Args:
        path: the YAML file.
        env: variables for `${VAR}` / `${VAR:-default}` expansion; None = `os.environ`, read
            now (nothing is read from the environment at import time).
        urls: expand `sources[].url` only for these source ids (a capture: its own; a
            worker or sink: none), so a role never needs, nor reads, a camera secret it
            does not use; the other urls stay as written (`${VAR}` templates, never
            opened). None = every url (`stream run`, `stream validate`).

    Returns:
        The validated, frozen config.

    Raises:
        ConfigError: the file cannot be read or parsed, a variable is missing, or a value is
            invalid; the message lists every problem with its key path.
    """
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{name}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{name}: is a directory, not a config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: not a UTF-8 text file") from None
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read config file: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: not valid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        raise ConfigError(f"{name}: the config file is empty; it needs at least `sources:`")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{name}: expected a mapping of keys at the top (like `sources:`), "
            f"got {type(data).__name__} {_show(data, None)}"
        )
    problems: list[Problem] = []
    templates: dict[Loc, str] = {}
    expanded = _expand(data, (), os.environ if env is None else env, problems, templates,
                       _unused_urls(data, urls))
    if problems:
        raise _config_error(name, problems, templates)
    assert isinstance(expanded, dict)
    return _validate(expanded, name, templates)


