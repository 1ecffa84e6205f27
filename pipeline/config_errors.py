"""pydantic validation errors as one ``ConfigError`` per problem, at its YAML path.

Imports nothing from pipeline/. ``cameras.2.url`` becomes ``cameras[2].url``; an unknown key gets the
nearest allowed one ("did you mean ...") and the list of allowed keys; a model validator's line that
starts with a field name ("loop: ...") is reported at that field; tagged-union tags (a sink's
``type:``) are not path parts; a wrong shape is said in YAML's words ("expected a list, got a mapping").
``booleans_for_numbers`` finds what pydantic lets through: ``yes``/``no`` where a number belongs.
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
        msg = _unknown_key(err["loc"][-1], err["loc"][:-1], data, root)
    elif err["type"] == "invalid_key":  # ``1: x``: its loc ends in the key, which is no list index
        path = _yaml_path(err["loc"][:-1], data)
        msg = _unknown_key(err["input"], err["loc"][:-1], data, root)
    elif err["type"] in ("model_type", "model_attributes_type", "dict_type"):
        msg = f"expected a mapping, got {kind_of(err['input'])}"  # not "... or instance of ModelConfig"
    elif err["type"] in ("tuple_type", "list_type"):
        msg = f"expected a list, got {kind_of(err['input'])}"
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


def kind_of(value: Any) -> str:
    """What a YAML value is, in YAML's words (never the value: it may be a secret)."""
    kinds = ((bool, "a boolean"), ((int, float), "a number"), (str, "a string"), ((list, tuple), "a list"),
             (dict, "a mapping"))
    return "null" if value is None else next((k for t, k in kinds if isinstance(value, t)), type(value).__name__)


def _unknown_key(key: Any, parent: tuple[Any, ...], data: Any, root: type[BaseModel]) -> str:
    allowed = _allowed_keys(parent, data, root)
    hint = difflib.get_close_matches(key, allowed, n=1) if isinstance(key, str) else []
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


def booleans_for_numbers(node: Any, models: list[type[BaseModel]], path: str = "") -> list[ConfigError]:
    """Numbers written as booleans in ``node`` (validated by one of ``models``): YAML reads yes, no, on and
    off as booleans, and pydantic took them for 1 and 0 (``max_restarts: no`` gave up at the first error)."""
    if isinstance(node, list):
        return [e for i, item in enumerate(node) for e in booleans_for_numbers(item, models, f"{path}[{i}]")]
    model = _pick(models, node) if isinstance(node, dict) else None
    if model is None:
        return []
    out = []
    for key, value in node.items():
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            continue
        if isinstance(value, bool) and _numeric(field.annotation):
            out.append(ConfigError(join_path(path, key), "expected a number, got a boolean (YAML reads yes, no, "
                                                         "on, off, true and false as booleans)"))
        else:
            out += booleans_for_numbers(value, list(dict.fromkeys(_model_classes(field.annotation))),
                                        join_path(path, key))
    return out


def _numeric(tp: Any) -> bool:
    """Whether ``tp`` is int or float, or one of them or None."""
    args = [a for a in getattr(tp, "__args__", None) or (tp,) if a is not type(None)]
    return bool(args) and all(a in (int, float) for a in args)
