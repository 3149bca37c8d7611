"""Search spaces: a base architecture and what a sweep varies, as a validated JSON file.

A space names a base architecture and, for each thing it varies, either a list of choices or a
range ``{"low": a, "high": b, "log": false}``. Encoder channels are sampled per layer, so the
number of channel parameters depends on the sampled depth (a conditional, define-by-run space).
Kernel size and stride are sampled once for the whole stack; padding is ``(kernel_size - 1) // 2``;
norm, activation and dropout are taken from the base's first conv layer; the decoder mirrors
the encoder. Anything not listed keeps the base's value. The latent's kind (``latent_kind``)
decides which size is sampled: ``latent_dim`` for a flat latent, ``latent_channels`` for a
spatial one (conditional parameters); ``upsample`` and ``reconstruction`` pick the mirror
decoder's mode and ``loss.reconstruction`` (docs/sweeps.md).

Example (search_spaces/smoke.json)::

    {"name": "smoke", "base": "../configs/smoke_64x36.json", "objective": "extrap_psnr_motion",
     "encoder": {"depth": {"low": 2, "high": 3}, "channels": [8, 16]},
     "latent_channels": [4, 8], "upsample": ["nearest", "transpose"],
     "lr": {"low": 0.002, "high": 0.01, "log": true}}
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
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
from varnext_ray.arch_sections import INT_MAX, MAX_LOSS_WEIGHT
from varnext_ray.config_errors import json_kind, problems_from_validation
from varnext_ray.errors import UserError, list_problems
from varnext_ray.objectives import DEFAULT_OBJECTIVE, OBJECTIVES
from varnext_ray.settings import MAX_BATCH_SIZE, MAX_EPOCHS, name_problem


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


def _reconstructions(values: list[str]) -> list[str]:
    from varnext_ray.arch import RECONSTRUCTIONS  # (kept local: the import block is shared)

    _choices(values)
    for value in values:
        if value not in RECONSTRUCTIONS:
            valid = ", ".join(f'"{k}"' for k in sorted(RECONSTRUCTIONS))
            raise PydanticCustomError(
                "arch", f"each choice must be one of {valid} (got {json.dumps(value)})"
            )
    return values


def _safe_name(name: str) -> str:
    problem = name_problem(name)  # the sweep's directory under --storage
    if problem is not None:
        raise PydanticCustomError("arch", problem)
    return name


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


MAX_DEPTH = 64  # encoder conv layers a space may sample


class EncoderSpace(_Strict):
    depth: IntSpec | None = None
    channels: IntChoices | None = None  # choices for every layer's out_channels
    kernel_size: IntChoices | None = None
    stride: IntChoices | None = None

    @model_validator(mode="after")
    def _positive(self) -> EncoderSpace:
        for name, least in (("depth", 0), ("channels", 1), ("kernel_size", 1), ("stride", 1)):
            _check_bounds(name, _values(getattr(self, name)), least, INT_MAX)
        if max(_values(self.depth), default=0) > MAX_DEPTH:
            got = max(_values(self.depth))
            raise PydanticCustomError(
                "arch", f"must be <= {MAX_DEPTH} conv layers (got {got})", {"field": "depth"}
            )
        return self


def _values(spec: Any) -> list:
    """The values a spec can take at its ends: every choice, or a range's low and high."""
    if spec is None:
        return []
    if isinstance(spec, (IntRange, FloatRange)):
        return [spec.low, spec.high]
    return list(spec)


# Each searched value's bounds (least, most), as the architecture (arch_schema: PosInt,
# LossWeight) and the settings (TrainSettings.check) bound the field it sets; lr is > 0.
_BOUNDS: dict[str, tuple[float, float]] = {
    "latent_dim": (1, INT_MAX),
    "latent_channels": (1, INT_MAX),
    "batch_size": (1, MAX_BATCH_SIZE),
    "beta": (0.0, MAX_LOSS_WEIGHT),
    "linearity_weight": (0.0, MAX_LOSS_WEIGHT),
    "lr": (0.0, math.inf),
}


def _check_bounds(name: str, values: list, least: float, most: float, above: bool = False) -> None:
    """A PydanticCustomError naming ``name`` when a value is not finite or out of bounds (``above``:
    it must be > ``least``, not >=)."""
    for value in values:
        if not math.isfinite(value):
            got = json.dumps(value)  # NaN, Infinity: as the JSON wrote it, and as arch check says
            raise PydanticCustomError(
                "arch", f"must be a finite number (got {got})", {"field": name}
            )
        if value < least or (above and value == least):
            sign = ">" if above else ">="
            raise PydanticCustomError(
                "arch", f"must be {sign} {least} (got {value})", {"field": name}
            )
        if value > most:
            raise PydanticCustomError(
                "arch", f"must be <= {most:,} (got {value:,})", {"field": name}
            )


class SearchSpace(_Strict):
    """A validated search space (see the module docstring)."""

    name: Annotated[str, AfterValidator(_safe_name)]
    base: str | dict[str, Any]
    objective: str = DEFAULT_OBJECTIVE  # the moving pixels, not the static background
    mode: Literal["max", "min"] | None = None
    epochs: int = 3
    encoder: EncoderSpace = EncoderSpace()
    linear: Annotated[list[list[int]], AfterValidator(_choices)] | None = None  # hidden sizes
    latent_dim: IntSpec | None = None  # a flat latent's size
    latent_kind: Annotated[list[Literal["flat", "spatial"]], AfterValidator(_choices)] | None = None
    latent_channels: IntSpec | None = None  # a spatial latent's channels
    upsample: (
        Annotated[list[Literal["transpose", "nearest", "bilinear"]], AfterValidator(_choices)]
        | None
    ) = None  # how the mirror decoder grows the image
    reconstruction: Annotated[list[str], AfterValidator(_reconstructions)] | None = None
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
        _check_bounds("epochs", [self.epochs], 1, MAX_EPOCHS)
        for name, (least, most) in _BOUNDS.items():
            _check_bounds(name, _values(getattr(self, name)), least, most, above=name == "lr")
        sizes = [size for hidden in self.linear or [] for size in hidden]
        _check_bounds("linear", sizes, 1, INT_MAX)
        if self.latent_kind is None and self.latent_dim and self.latent_channels:
            raise PydanticCustomError(
                "arch",
                "must be given when both latent_dim (flat) and latent_channels (spatial) are "
                'searched (e.g. ["spatial", "flat"])',
                {"field": "latent_kind"},
            )
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
        allow_nan=True,  # the schema names the field: "lr: must be a finite number (got NaN)"
        refuse_duplicates=True,
    )
    space = parse_space(data, where)
    if isinstance(space.base, str):
        base = load_arch(Path(path).parent / space.base).to_dict()
    else:
        base = parse_arch(space.base, f"{where}: base").to_dict()
    _check_space_against_base(space, base, where)
    _check_latent_against_base(space, base, where)
    return space, base


def _check_latent_against_base(space: SearchSpace, base: dict[str, Any], where: str) -> None:
    """A latent kind the space samples needs its size: searched, or the base's own."""
    base_kind = base["latent"]["kind"]
    for kind, name in (("flat", "latent_dim"), ("spatial", "latent_channels")):
        if kind in (space.latent_kind or []) and kind != base_kind and getattr(space, name) is None:
            raise UserError(
                f'latent_kind: samples "{kind}" latents but the space has no {name} and the '
                f"base latent is {base_kind}",
                where,
                f"add {name} choices to the space",
            )
    # A setting of the other kind of latent than every point has was silently never sampled.
    kinds = set(space.latent_kind) if space.latent_kind else {latent_kind(space, base_kind, None)}
    for name, kind in (("linear", "flat"), ("latent_dim", "flat"), ("latent_channels", "spatial")):
        if getattr(space, name) is not None and kind not in kinds:
            (other,) = kinds
            raise UserError(
                f"{name}: never sampled: it shapes a {kind} latent, and every point of the space "
                f"has a {other} one",
                where,
                f'remove {name}, or sample {kind} latents too ("latent_kind": ["flat", "spatial"])',
            )


def smallest_point(space: SearchSpace, base_depth: int) -> dict[str, Any]:
    """The point with the fewest parameters the space can sample (per varied setting)."""
    enc, point = space.encoder, {}
    if enc.depth is not None:
        point["depth"] = min(_values(enc.depth))
    if enc.channels is not None:
        depth = point.get("depth", base_depth)
        point |= {f"channels_{i}": min(enc.channels) for i in range(depth)}
    if enc.kernel_size is not None:
        point["kernel_size"] = min(enc.kernel_size)
    if space.linear is not None:
        point["linear"] = min(space.linear, key=sum)
    if space.latent_dim is not None:
        point["latent_dim"] = min(_values(space.latent_dim))
    if space.latent_channels is not None:
        point["latent_channels"] = min(_values(space.latent_channels))
        if space.latent_kind is not None:
            point["latent_kind"] = "spatial" if "spatial" in space.latent_kind else "flat"
    return point


def _check_space_against_base(space: SearchSpace, base: dict[str, Any], where: str) -> None:
    """Refuses, before any trial, a space whose every point would be refused for its size, and
    one that varies the encoder's layers over a base that has none to copy."""
    enc = space.encoder
    varies = [n for n in ("depth", "channels", "kernel_size", "stride") if getattr(enc, n)]
    if varies and not base["encoder"]["conv"]:
        raise UserError(
            f"encoder.{varies[0]}: the base architecture has no conv layer to vary",
            where,
            "give the base at least one encoder.conv layer (new layers copy its first)",
        )
    from varnext_ray.arch import check_bounds  # (kept local: the import block is shared)

    try:
        smallest = parse_arch(
            point_to_arch(base, smallest_point(space, len(base["encoder"]["conv"]))),
            "smallest point",
            max_params=float("inf"),
            max_activation_bytes=float("inf"),
        )
    except UserError:  # an invalid point fails its own trial (the sweep goes on), unless all do
        _check_some_point_is_valid(space, base, where)
        return
    try:
        check_bounds(smallest, where)
    except UserError as err:
        what = f"even the smallest architecture of the space is too large: {err.what}"
        raise UserError(what, where, err.fix) from None


SAMPLED_POINTS = 64  # points drawn to find one valid architecture in a space


def _check_some_point_is_valid(space: SearchSpace, base: dict[str, Any], where: str) -> None:
    """Refuses a space in which none of :data:`SAMPLED_POINTS` points, drawn as a sweep draws
    them (Optuna, seeded random), is a valid architecture (sizes aside): every trial would
    fail after Ray started, and the sweep end with no trial finished."""
    failures = draw_failures(space, base)
    if failures:
        raise UserError(
            f"none of {SAMPLED_POINTS} points drawn from the space is a valid architecture (the "
            f"first: {failures[0].what})",
            where,
            "fix the base architecture, or the ranges that make every point invalid",
        )


def draw_failures(
    space: SearchSpace,
    base: dict[str, Any],
    check: Callable[[ArchConfig], None] | None = None,
) -> list[UserError]:
    """Draws up to :data:`SAMPLED_POINTS` points as a sweep draws them (Optuna, seeded random)
    until one is a valid architecture (sizes aside) that ``check`` (raising a UserError) also
    takes: [] then, else every drawn point's error, in order."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    define = DefineByRun(space, base)
    failures: list[UserError] = []
    for _ in range(SAMPLED_POINTS):
        trial = study.ask()
        define(trial)
        try:
            arch = parse_arch(
                point_to_arch(base, trial.params),
                "sampled point",
                max_params=math.inf,
                max_activation_bytes=math.inf,
            )
            if check is not None:
                check(arch)
            return []
        except UserError as err:
            failures.append(err)
    return failures


def parse_space(data: Any, where: str) -> SearchSpace:
    """Validates a JSON-shaped space, reporting every problem at once (UserError)."""
    if not isinstance(data, dict):
        got = json_kind(data)
        raise UserError(f"a search space must be a JSON object (got {got})", where, _FIX)
    try:
        return SearchSpace.model_validate(data)
    except ValidationError as err:
        problems = [_drop_form(p) for p in problems_from_validation(err, _SECTIONS)]
    raise UserError(list_problems("invalid search space", problems), where, _FIX)


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
        self.base_kind = base["latent"]["kind"]

    def __call__(self, trial: Any) -> None:
        space, enc = self.space, self.space.encoder
        depth = _suggest(trial, "depth", enc.depth) if enc.depth is not None else self.base_depth
        if enc.channels is not None:
            for i in range(depth):
                _suggest(trial, f"channels_{i}", enc.channels)
        for name in ("kernel_size", "stride"):
            if getattr(enc, name) is not None:
                _suggest(trial, name, getattr(enc, name))
        kind = latent_kind(space, self.base_kind, trial)
        skip = {"linear", "latent_dim"} if kind == "spatial" else {"latent_channels"}
        for name in (
            *("linear", "latent_dim", "latent_channels", "upsample", "reconstruction"),
            *("beta", "linearity_weight", "lr", "batch_size"),
        ):
            if getattr(space, name) is not None and name not in skip:
                _suggest(trial, name, getattr(space, name))


def latent_kind(space: SearchSpace, base_kind: str, trial: Any) -> str:
    """A trial's latent kind: sampled from ``latent_kind``, else implied by the size searched
    (``latent_dim``: flat, ``latent_channels``: spatial), else the base's."""
    if space.latent_kind is not None:
        return _suggest(trial, "latent_kind", space.latent_kind)
    if space.latent_dim is not None:
        return "flat"
    return "spatial" if space.latent_channels is not None else base_kind


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
    _set_latent(arch, base, point)
    for name in ("beta", "linearity_weight"):
        if name in point:
            arch.setdefault("loss", {})[name] = float(point[name])
    if "reconstruction" in point:
        arch.setdefault("loss", {})["reconstruction"] = str(point["reconstruction"])
    mode = point.get("upsample") or _mirror_mode(base)
    arch["decoder"] = "mirror" if mode == "transpose" else {"mirror": True, "upsample": mode}
    return arch


def _mirror_mode(base: dict[str, Any]) -> str:
    decoder = base.get("decoder", "mirror")
    return decoder.get("upsample", "transpose") if isinstance(decoder, dict) else "transpose"


def _set_latent(arch: dict[str, Any], base: dict[str, Any], point: dict[str, Any]) -> None:
    """A flat point gets the shorthand ``latent_dim``; a spatial one ``latent`` (no linear
    layers) and, when the point is valid, ``latent_dim`` = its element count (for tables)."""
    base_latent = base.get("latent") or {"kind": "flat", "dim": base.get("latent_dim")}
    kind = point.get("latent_kind") or (
        "flat" if "latent_dim" in point else "spatial" if "latent_channels" in point else None
    )
    kind = kind or base_latent["kind"]
    arch.pop("latent", None)
    arch.pop("latent_dim", None)
    same = base_latent if base_latent["kind"] == kind else {}
    if kind == "flat":
        arch["latent_dim"] = int(point.get("latent_dim", same.get("dim", 32)))
        return
    arch["encoder"]["linear"] = []
    arch["latent"] = {
        "kind": "spatial",
        "channels": int(point.get("latent_channels", same.get("channels", 4))),
        "project_kernel_size": same.get("project_kernel_size", 1),
    }
    try:
        arch["latent_dim"] = ArchConfig.model_validate(arch).latent_dim
    except ValidationError:
        return  # an invalid point: its trial reports what is wrong


def short_arch(arch: ArchConfig | dict[str, Any]) -> str:
    """``conv 8-16-16 k3s2 | lin [] | z8`` (flat) or ``... | z4ch nearest`` (spatial, upsample
    decoder) for tables."""
    data = arch.to_dict() if isinstance(arch, ArchConfig) else arch
    conv = data["encoder"]["conv"]
    chans = "-".join(str(c["out_channels"]) for c in conv)
    k, s = conv[0]["kernel_size"], conv[0]["stride"]
    latent = data.get("latent") or {"kind": "flat", "dim": data.get("latent_dim")}
    z = f"z{latent['dim']}" if latent["kind"] == "flat" else f"z{latent['channels']}ch"
    mode = _mirror_mode(data)
    z += f" {mode}" if mode != "transpose" else ""
    return f"conv {chans} k{k}s{s} | lin {data['encoder'].get('linear', [])} | {z}"
