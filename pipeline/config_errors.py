"""pydantic validation errors as one ``ConfigError`` per problem, at its YAML path.

Imports nothing from pipeline/. ``cameras.2.url`` becomes ``cameras[2].url``; an unknown key gets the
nearest allowed one ("did you mean ...") and the list of allowed keys; a model validator's line that
starts with a field name ("loop: ...") is reported at that field; tagged-union tags (a sink's
``type:``) are not path parts.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ValidationError

from engines.errors import ConfigError


def join_path(path: str, key: Any) -> str:
    """``cameras[2]`` + ``url`` -> ``cameras[2].url`` (a top-level key has no dot)."""
    return f"{path}.{key}" if path else str(key)


def validation_errors(e: ValidationError, data: Any, *, root: type[BaseModel]) -> list[ConfigError]:
    """Every error of ``e`` (``root.model_validate(data)`` raised it) at its YAML path, in order."""
    out = []
    for err in e.errors():
        if not _redundant(err):
            out += _to_config_errors(err, data, root)
    return out


def _redundant(err: Any) -> bool:
    """pydantic also says "too short" for a list whose items failed: the item errors say it all."""
    inp = err.get("input")
    return err["type"] == "too_short" and isinstance(inp, list) and len(inp) >= err["ctx"]["min_length"]


def _yaml_path(loc: tuple[Any, ...], data: Any) -> str:
    """``('cameras', 2, 'url')`` as ``cameras[2].url``; tagged-union tags are not path parts."""
    parts: list[str] = []
    node = data
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
            node = node[part] if isinstance(node, list) and part < len(node) else None
        elif isinstance(node, dict) and part not in node and node.get("type") == part:
            continue  # pydantic puts the discriminator value in the location
        else:
            parts.append(f".{part}" if parts else str(part))
            node = node.get(part) if isinstance(node, dict) else None
    return "".join(parts)


def _to_config_errors(err: Any, data: Any, root: type[BaseModel]) -> list[ConfigError]:
    """One pydantic error as ConfigErrors at YAML paths (a validator may report several lines)."""
    path = _yaml_path(err["loc"], data)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = _unknown_key(err, data, root)
    elif err["type"] == "missing":
        msg = "too few items" if isinstance(err["loc"][-1], int) else "required key is missing"
    elif err["type"] == "union_tag_invalid":
        msg = f"unknown type {err['input'].get('type')!r}; expected {err['ctx']['expected_tags']}"
    elif err["type"] == "union_tag_not_found":
        msg = "missing 'type:' key"
    out = []
    for line in msg.splitlines():
        # A model validator's line may name a sub-field ("loop: ..."): move that into the path.
        m = re.match(r"^([a-z_]+): (.*)$", line, re.S)
        if m and err["type"] == "value_error" and _is_field(err["loc"], m.group(1), data, root):
            out.append(ConfigError(join_path(path, m.group(1)), m.group(2)))
        else:
            out.append(ConfigError(path, line))
    return out


def _is_field(loc: tuple[Any, ...], name: str, data: Any, root: type[BaseModel]) -> bool:
    return name in _allowed_keys(loc, data, root)


def _unknown_key(err: Any, data: Any, root: type[BaseModel]) -> str:
    key = str(err["loc"][-1])
    allowed = _allowed_keys(err["loc"][:-1], data, root)
    hint = difflib.get_close_matches(key, allowed, n=1)
    msg = f"unknown key {key!r}"
    if hint:
        msg += f" (did you mean {hint[0]!r}?)"
    return msg + (f"; allowed: {', '.join(allowed)}" if allowed else "")


def _allowed_keys(loc: tuple[Any, ...], data: Any, root: type[BaseModel]) -> list[str]:
    """Field names of the model at ``loc`` (a tagged union's model is picked by the node's ``type:``)."""
    candidates: list[type[BaseModel]] = [root]
    node = data
    for part in loc:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        if isinstance(node, dict) and part not in node and node.get("type") == part:
            continue
        model = _pick(candidates, node)
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return []
        candidates = list(dict.fromkeys(_model_classes(field.annotation)))
        node = node.get(part) if isinstance(node, dict) else None
    model = _pick(candidates, node)
    return list(model.model_fields) if model is not None else []


def _pick(candidates: list[type[BaseModel]], node: Any) -> type[BaseModel] | None:
    """The candidate whose ``type`` literal matches ``node['type']`` (or the only candidate)."""
    if len(candidates) == 1:
        return candidates[0]
    tag = node.get("type") if isinstance(node, dict) else None
    for cls in candidates:
        field = cls.model_fields.get("type")
        if field is not None and tag in getattr(field.annotation, "__args__", ()):
            return cls
    return None


def _model_classes(tp: Any) -> Iterator[type[BaseModel]]:
    """Model classes inside an annotation (through tuple[...], Optional, Annotated, unions)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        yield tp
        return
    for arg in getattr(tp, "__args__", ()) or ():
        yield from _model_classes(arg)
    origin = getattr(tp, "__origin__", None)
    if origin is not None and not getattr(tp, "__args__", None):
        yield from _model_classes(origin)
