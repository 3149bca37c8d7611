"""Search spaces: a base architecture and what a sweep varies, as a validated JSON file.

A space names a base architecture and, for each thing it varies, either a list of choices or a
range ``{"low": a, "high": b, "log": false}``. Encoder channels are sampled per layer, so the
number of channel parameters depends on the sampled depth (a conditional, define-by-run space).
Kernel size and stride are sampled once for the whole stack; padding is ``(kernel_size - 1) // 2``;
norm, activation and dropout are taken from the base's first conv layer; the decoder mirrors
the encoder. Anything not listed keeps the base's value.

Example (search_spaces/smoke.json)::

    {"name": "smoke", "base": "../configs/smoke_64x36.json", "objective": "extrap_psnr",
     "encoder": {"depth": {"low": 2, "high": 3}, "channels": [8, 16]},
     "latent_dim": [8, 16], "lr": {"low": 0.0005, "high": 0.005, "log": true}}
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from varnext_ray.arch import ArchConfig, load_arch, parse_arch
from varnext_ray.config_errors import problems_from_validation
from varnext_ray.errors import UserError
from varnext_ray.objectives import OBJECTIVES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class IntRange(_Strict):
    """Integers from ``low`` to ``high``, both included."""

    low: int
    high: int
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        _check_range(self.low, self.high, self.log)
        return self


class FloatRange(_Strict):
    """Floats from ``low`` to ``high``; ``log`` samples the exponent uniformly."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        _check_range(self.low, self.high, self.log)
        return self


def _check_range(low: float, high: float, log: bool) -> None:
    if low > high:
        raise PydanticCustomError(
            "arch", f"low must be <= high (got low={low}, high={high}); swap them"
        )
    if log and low <= 0:
        raise PydanticCustomError("arch", f"a log range needs low > 0 (got low={low})")


def _choices(values: list) -> list:
    if not values:
        raise PydanticCustomError("arch", "must list at least one choice (got [])")
    return values


IntChoices = Annotated[list[int], AfterValidator(_choices)]
FloatChoices = Annotated[list[float], AfterValidator(_choices)]


def _form(value: Any) -> str:
    return "range" if isinstance(value, dict) else "choices"


# A spec is either a list of choices or a range object; the discriminator picks the form by
# the JSON type, so an error names only the form that was written.
IntSpec = Annotated[
    Annotated[IntRange, Tag("range")] | Annotated[IntChoices, Tag("choices")], Discriminator(_form)
]
FloatSpec = Annotated[
    Annotated[FloatRange, Tag("range")] | Annotated[FloatChoices, Tag("choices")],
    Discriminator(_form),
]


class EncoderSpace(_Strict):
    depth: IntSpec | None = None
    channels: IntChoices | None = None  # choices for every layer's out_channels
    kernel_size: IntChoices | None = None
    stride: IntChoices | None = None


class SearchSpace(_Strict):
    """A validated search space (see the module docstring)."""

    name: str
    base: str | dict[str, Any]
    objective: str = "extrap_psnr"
    mode: Literal["max", "min"] | None = None
    epochs: int = 3
    encoder: EncoderSpace = EncoderSpace()
    linear: Annotated[list[list[int]], AfterValidator(_choices)] | None = None  # hidden sizes
    latent_dim: IntSpec | None = None
    beta: FloatSpec | None = None
    linearity_weight: FloatSpec | None = Field(  # the loss's linearity weight (lambda)
        None, validation_alias=AliasChoices("linearity_weight", "linearity")
    )
    lr: FloatSpec | None = None
    batch_size: IntChoices | None = None

    @model_validator(mode="after")
    def _check(self) -> SearchSpace:
        if self.objective not in OBJECTIVES:
            raise PydanticCustomError(
                "arch",
                f"unknown objective metric {json.dumps(self.objective)}; use one of "
                f"{', '.join(sorted(OBJECTIVES))}",
                {"field": "objective"},
            )
        if self.epochs < 1:
            raise PydanticCustomError("arch", "must be >= 1", {"field": "epochs"})
        return self

    @property
    def direction(self) -> str:
        """``max`` or ``min``: the space's mode, else the objective's natural direction."""
        return self.mode or OBJECTIVES[self.objective]


_SECTIONS = {(): SearchSpace, ("encoder",): EncoderSpace}
_FIX = "fix each field named above; docs/sweeps.md lists every key"


def load_space(path: str | Path) -> tuple[SearchSpace, dict[str, Any]]:
    """Reads and validates a space file; returns it and its base architecture as a dict."""
    from varnext_ray.safe_io import read_json  # (kept local: the import block is shared)

    where = str(path)
    data = read_json(
        path,
        what="search space file",
        fix="pass a search space JSON file",
        refuse_duplicates=True,
    )
    space = parse_space(data, where)
    if isinstance(space.base, str):
        base = load_arch(Path(path).parent / space.base).to_dict()
    else:
        base = parse_arch(space.base, f"{where}: base").to_dict()
    return space, base


def parse_space(data: Any, where: str) -> SearchSpace:
    """Validates a JSON-shaped space, reporting every problem at once (UserError)."""
    if not isinstance(data, dict):
        raise UserError("a search space must be a JSON object", where, _FIX)
    try:
        return SearchSpace.model_validate(data)
    except ValidationError as err:
        problems = [_drop_form(p) for p in problems_from_validation(err, _SECTIONS)]
    head = "invalid search space" + (f", {len(problems)} problems" if len(problems) > 1 else "")
    raise UserError(f"{head}: {'; '.join(problems)}", where, _FIX)


def _drop_form(problem: str) -> str:
    """``lr.range: ...`` -> ``lr: ...`` (the discriminator's tag is not part of the JSON path)."""
    path, sep, rest = problem.partition(": ")
    parts = [p for p in path.split(".") if p not in ("range", "choices")]
    return ".".join(parts) + sep + rest


def _suggest(trial: Any, name: str, spec: Any) -> Any:
    """One Optuna suggestion for a choice list or a range."""
    if isinstance(spec, list):
        if all(isinstance(v, list) for v in spec):  # lists are not valid Optuna choices
            return json.loads(trial.suggest_categorical(name, [json.dumps(v) for v in spec]))
        return trial.suggest_categorical(name, spec)
    if isinstance(spec, IntRange):
        return trial.suggest_int(name, spec.low, spec.high, log=spec.log)
    return trial.suggest_float(name, spec.low, spec.high, log=spec.log)


class DefineByRun:
    """The Optuna define-by-run function of a space (for Ray Tune's OptunaSearch).

    A class rather than a closure so that Tune can pickle the searcher into its experiment
    state (``--resume`` restores it).
    """

    def __init__(self, space: SearchSpace, base: dict[str, Any]) -> None:
        self.space = space
        self.base_depth = len(base["encoder"]["conv"])

    def __call__(self, trial: Any) -> None:
        space, enc = self.space, self.space.encoder
        depth = _suggest(trial, "depth", enc.depth) if enc.depth is not None else self.base_depth
        if enc.channels is not None:
            for i in range(depth):
                _suggest(trial, f"channels_{i}", enc.channels)
        for name in ("kernel_size", "stride"):
            if getattr(enc, name) is not None:
                _suggest(trial, name, getattr(enc, name))
        for name in ("linear", "latent_dim", "beta", "linearity_weight", "lr", "batch_size"):
            if getattr(space, name) is not None:
                _suggest(trial, name, getattr(space, name))


def point_to_arch(base: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    """The full architecture JSON of one sampled point (not yet validated)."""
    arch = copy.deepcopy(base)
    conv = arch["encoder"]["conv"]
    template = dict(conv[0])
    depth = int(point.get("depth", len(conv)))
    layers = []
    for i in range(depth):
        layer = dict(conv[i]) if i < len(conv) else dict(template)
        layer["out_channels"] = int(point.get(f"channels_{i}", layer["out_channels"]))
        for name in ("kernel_size", "stride"):
            if name in point:
                layer[name] = int(point[name])
        if "kernel_size" in point:
            layer["padding"] = (int(point["kernel_size"]) - 1) // 2
        layers.append(layer)
    arch["encoder"]["conv"] = layers
    if "linear" in point:
        value = point["linear"]
        arch["encoder"]["linear"] = json.loads(value) if isinstance(value, str) else list(value)
    if "latent_dim" in point:
        arch["latent_dim"] = int(point["latent_dim"])
    for name in ("beta", "linearity_weight"):
        if name in point:
            arch.setdefault("loss", {})[name] = float(point[name])
    arch["decoder"] = "mirror"
    return arch


def short_arch(arch: ArchConfig | dict[str, Any]) -> str:
    """``conv 8-16-16 k3s2 | lin [] | z8`` for tables."""
    data = arch.to_dict() if isinstance(arch, ArchConfig) else arch
    conv = data["encoder"]["conv"]
    chans = "-".join(str(c["out_channels"]) for c in conv)
    k, s = conv[0]["kernel_size"], conv[0]["stride"]
    return (
        f"conv {chans} k{k}s{s} | lin {data['encoder'].get('linear', [])} | z{data['latent_dim']}"
    )
