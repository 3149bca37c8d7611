"""Config errors: pydantic validation errors of architectures and search spaces as one-line
messages.

Each problem reads ``<JSON path>: <what it must be> (got <value>)``, e.g.
``encoder.conv[2].stride: must be >= 1 (got 0)``; an unknown key suggests the closest valid
key or lists them all.
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any

from pydantic import BaseModel, ValidationError

# Tags pydantic adds to an error's location for a value with several forms, by the key that
# holds the value (for list items, the key of the list): they are not part of the JSON path.
_TAGS = {
    "decoder": ("mirror", "mirror_object", "explicit"),
    "latent": ("flat", "spatial"),
    "layers": ("conv_transpose", "upsample"),
    "conv_transpose": ("conv_transpose", "upsample"),
}

# pydantic error type -> what the value must be ({ctx keys} are filled from the error's ctx)
_MUST = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "literal_error": "must be {expected}",
    "model_type": "must be an object {{...}}",
    "model_attributes_type": "must be an object {{...}}",
    "dict_type": "must be an object {{...}}",
    "list_type": "must be a list [...]",
    "tuple_type": "must be a list [...]",
    "too_short": "must have at least {min_length} items",
    "too_long": "must have at most {max_length} items",
}


def json_path(loc: tuple[str | int, ...]) -> str:
    """``("encoder", "conv", 2, "stride")`` -> ``"encoder.conv[2].stride"``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path or "(top level)"


def json_kind(value: Any) -> str:
    """What a JSON value is, in JSON's words: ``a list``, ``null``, ``a number``..."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    kinds = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number"}
    return kinds.get(type(value), type(value).__name__)


def _got(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


Sections = dict[tuple[str, ...], type[BaseModel] | tuple[type[BaseModel], ...]]


def _drop_tags(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """``("decoder", "explicit", "layers", 0, "upsample", "mode")`` -> without the two tags."""
    out = []
    for i, part in enumerate(loc):
        owner = (
            loc[i - 2] if i >= 2 and isinstance(loc[i - 1], int) else (loc[i - 1] if i else None)
        )
        if isinstance(part, str) and part in _TAGS.get(owner, ()):  # type: ignore[arg-type]
            continue
        out.append(part)
    return tuple(out)


def _aliases(model: type[BaseModel]) -> dict[str, str]:
    """Each other name a model's field is read by (``AliasChoices``) -> the field's name."""
    names = {}
    for field, info in model.model_fields.items():
        for choice in getattr(info.validation_alias, "choices", ()):
            if isinstance(choice, str) and choice != field:
                names[choice] = field
    return names


def _form_name(model: type[BaseModel]) -> str:
    """``SpatialLatent`` -> ``a spatial latent``."""
    words = re.findall(r"[A-Z][a-z]*", model.__name__)
    return "a " + " ".join(w.lower() for w in words)


def _keys(found: type[BaseModel] | tuple[type[BaseModel], ...] | None) -> set[str]:
    models = found if isinstance(found, tuple) else (found,) if found else ()
    return {name for model in models for name in model.model_fields}


def _near_key(key: str, parent: Any, known: set[str]) -> str | None:
    """A key of ``parent`` (the object missing ``key``) that is ``key`` misspelled: another
    case, stray spaces, or a close spelling (``"frames "``), quoted as JSON; None if none.
    Keys the object may hold (``known``: "splits" beside "split") are never it."""
    if not isinstance(parent, dict):
        return None
    names = [k for k in parent if isinstance(k, str) and k not in known]
    same = [k for k in names if k.strip().lower() == key.lower()]
    near = same or difflib.get_close_matches(key, names, n=1, cutoff=0.8)
    return json.dumps(near[0])[:60] if near else None


def _unknown_key(loc: tuple[str | int, ...], sections: Sections) -> str:
    key, parent = str(loc[-1]), tuple(p for p in loc[:-1] if isinstance(p, str))
    found = sections.get(parent)
    models = found if isinstance(found, tuple) else (found,) if found else ()
    for model in models:
        if key in _aliases(model):  # read already by its other name, given too
            return f'unknown key here: it is the same key as "{_aliases(model)[key]}" (give one)'
    owners = [_form_name(model) for model in models if key in model.model_fields]
    if owners:  # a key of the other form (a flat latent given "channels")
        return f"unknown key for this form (only {' or '.join(owners)} has it)"
    valid = sorted({name for model in models for name in model.model_fields})
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f'unknown key (did you mean "{close[0]}"?)'
    return "unknown key" + (f"; valid keys: {', '.join(valid)}" if valid else "")


def _problem(err: dict[str, Any], sections: Sections) -> list[str]:
    loc, kind, ctx = _drop_tags(tuple(err["loc"])), err["type"], err.get("ctx") or {}
    if kind == "arch_shapes":
        return list(ctx["problems"])
    if kind == "arch" and ctx.get("field"):
        loc = (*loc, ctx["field"])
    path = json_path(loc)
    if kind == "extra_forbidden":
        return [f"{path}: {_unknown_key(loc, sections)}"]
    if kind == "missing":
        parent = tuple(p for p in loc[:-1] if isinstance(p, str))
        near = _near_key(str(loc[-1]), err.get("input"), _keys(sections.get(parent)))
        return [f"{path}: must be given (missing" + (f"; is {near} it?)" if near else ")")]
    if kind in ("arch", "decoder_kind", "layer_kind", "latent_kind"):
        got = "" if kind == "arch" else f" (got {_got(err['input'])})"
        return [f"{path}: {err['msg']}{got}"]
    must = _MUST[kind].format(**ctx) if kind in _MUST else err["msg"]
    return [f"{path}: {must} (got {_got(err['input'])})"]


def problems_from_validation(err: ValidationError, sections: Sections) -> list[str]:
    """Every problem in ``err``, one message each, in schema order.

    Args:
        err: The error from validating a whole architecture.
        sections: JSON object path (indices dropped) -> the model reading it, for key hints.
    """
    problems: list[str] = []
    for item in err.errors(include_url=False):
        problems += _problem(item, sections)
    return problems
