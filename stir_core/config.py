"""One knob schema: every config field carries its type, range/choices, help and group as field metadata,
and ONE caster/validator reads it for every entry point (CLI `--set`/`--sweep`, YAML, app widgets, deep
links, saved views).

    @dataclass
    class C:
        k: float = knob(1.0, float, "what it does", "group", min=0)

    cast_value(C, "k", "0.5")        -> 0.5      (strings are parsed; typed values are checked)
    from_dict(C, {"k": 2}, "stir")   -> C(k=2.0) (unknown fields and bad values name the field)
    parse_assignment(C, "k=0.5")     -> ("k", 0.5)

Adding a knob is a one-place change: add the field with `knob(...)` metadata; the CLI, the YAML loader,
the app's knob editor and deep links pick it up. Every error is a `ConfigError` (a ValueError) whose
message names the field.

Every config dataclass lives here — `StirConfig` (online), `MineConfig` (Stage I), `SelectConfig`
(Stage II) — with the one layer-spec parser (`parse_layer_spec`, `resolve_layer`). The module imports no
torch (`stir --version` and the app's first paint read it), and sits below `runtime` in the layers.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import MISSING, asdict, dataclass, fields, replace
from typing import Any

from stir_core.io.bounded import clip

NONE_WORDS = ("none", "null")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
INT_LIMIT = 2**63
MAX_TEXT = 1000  # characters of a text knob


class ConfigError(ValueError):
    """A config value that is unknown, of the wrong type or out of range; the message names the field."""


@dataclass(frozen=True, kw_only=True)
class Knob:
    """Schema of one field. `type`: int | float | str | bool | list (a list of layer specs).
    `optional`: None is allowed (and means "off"/"all"). `min`/`max`: inclusive bounds (`gt`: exclusive
    lower bound). `choices`: the allowed values. `layer`: the value is a layer index, checked against the
    model's depth (and the library's layers) by `check_layers`."""

    type: type
    help: str
    group: str
    optional: bool = False
    min: float | None = None
    max: float | None = None
    gt: float | None = None
    choices: tuple | None = None
    layer: bool = False

    def describe(self) -> str:
        """The allowed values, in words (for messages and widget help)."""
        if self.choices is not None:
            out = "one of " + ", ".join(map(str, self.choices))
        elif self.type is bool:
            out = "true or false"
        elif self.type is list:
            out = "a list of layer specs (int, fraction in [0, 1], or 'a/b')"
        else:
            out = {int: "an integer", float: "a number", str: "text"}.get(self.type, self.type.__name__)
            if self.gt is not None:
                out += f" > {self.gt:g}"
            if self.min is not None:
                out += f" >= {self.min:g}"
            if self.max is not None:
                out += f" <= {self.max:g}"
        return out + (" or none" if self.optional else "")


def knob(default: Any, type_: type, help: str, group: str, **kw: Any) -> Any:  # noqa: A002 - reads like the schema
    """A dataclass field with its schema (`Knob`) as metadata. List defaults are copied per instance."""
    meta = {"knob": Knob(type=type_, help=help, group=group, **kw)}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda d=tuple(default): list(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def knobs(cls: Any) -> dict[str, Knob]:
    """{field name: Knob} of a config dataclass (class or instance), in field order."""
    return {f.name: f.metadata["knob"] for f in fields(cls) if "knob" in f.metadata}


def groups(cls: Any) -> dict[str, list[str]]:
    """{group: [field names]} in field order (what the app draws as sections)."""
    out: dict[str, list[str]] = {}
    for name, k in knobs(cls).items():
        out.setdefault(k.group, []).append(name)
    return out


# --- layer specs: the one parser (torch-free; the model applies its depth) ---------------------------

def parse_layer_spec(spec: int | float | str) -> int | float:
    """The one layer-spec parser: an int (negative from the end) or a fraction in [0, 1], from an int, a
    float, or text ("3", "-1", "0.6", "1/2"); the model's depth is applied by `resolve_layer`.

    >>> parse_layer_spec(" -1"), parse_layer_spec("0.6"), parse_layer_spec("1/2"), parse_layer_spec(2)
    (-1, 0.6, 0.5, 2)
    """
    original = spec
    if isinstance(spec, str):
        s = spec.strip()
        if "/" in s:
            a, b = s.split("/", 1)
            try:
                spec = int(a) / int(b)
            except (ValueError, ZeroDivisionError) as err:
                raise ValueError(f"bad layer spec {original!r}: expected 'a/b' with integers, b > 0") from err
        else:
            try:
                spec = float(s) if any(c in s for c in ".eE") else int(s)
            except ValueError as err:
                raise ValueError(f"bad layer spec {original!r}: expected an int, a fraction or 'a/b'") from err
    if isinstance(spec, bool) or not isinstance(spec, (int, float)):
        raise ValueError(f"bad layer spec {original!r}: expected an int, a fraction in [0, 1] or 'a/b'")
    if isinstance(spec, float) and not 0.0 <= spec <= 1.0:
        raise ValueError(f"layer fraction {original!r} is outside [0, 1]")
    return spec


def parse_layer_specs(specs: Any) -> list[int | float | str]:
    """A list of layer specs from a list, one spec, or comma-separated text ("2, 3", "0.5, -1"), each checked
    by `parse_layer_spec`; text specs are kept as written ("1/2" stays "1/2", as configs record it).

    >>> parse_layer_specs("2, -1 ,1/2")
    [2, -1, '1/2']
    """
    if isinstance(specs, str):
        specs = [p for p in (s.strip() for s in specs.split(",")) if p]
    elif isinstance(specs, (int, float)) and not isinstance(specs, bool):
        specs = [specs]
    if not isinstance(specs, (list, tuple)):
        raise ValueError(f"bad layer specs {specs!r}: expected a list of layer specs")
    out: list[int | float | str] = []
    for s in specs:
        v = parse_layer_spec(s)
        keep_text = isinstance(s, str) and "/" in s
        out.append(s.strip() if keep_text else v)
    return out


def resolve_layer(spec: int | float | str, n_layers: int) -> int:
    """Resolve one layer spec to a block index in [0, n_layers).

    >>> resolve_layer(-1, 4), resolve_layer(0.6, 6), resolve_layer("1/2", 5)
    (3, 3, 2)
    """
    original = spec
    spec = parse_layer_spec(spec)
    if isinstance(spec, float):
        return int(round(spec * (n_layers - 1)))
    if isinstance(spec, int):
        layer = spec + n_layers if spec < 0 else spec
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer {original!r} is out of range for a model with {n_layers} layers "
                             f"(valid: 0..{n_layers - 1} or -{n_layers}..-1)")
        return layer
    raise ValueError(f"bad layer spec {original!r}")


def resolve_layers(specs, n_layers: int) -> list[int]:
    """Resolve a list (or one) of layer specs, keeping order and dropping duplicates."""
    if isinstance(specs, (int, float, str)):
        specs = [specs]
    out: list[int] = []
    for s in specs:
        layer = resolve_layer(s, n_layers)
        if layer not in out:
            out.append(layer)
    return out


def _where(section: str | None, name: str) -> str:
    name = name if len(name) <= 60 else clip(name, 60)  # a user's key may be megabytes long
    return f"{section}.{name}" if section else name


def _layer_specs(v: Any, where: str) -> list[int | float | str]:
    """Layer specs checked for form by the one parser (`parse_layer_specs`); the depth is checked later,
    against the model."""
    try:
        return parse_layer_specs(v)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from err


def cast_value(cls: Any, name: str, value: Any, section: str | None = None) -> Any:
    """`value` (a string from a command line/URL/widget, or an already typed value) as the field's type,
    checked against its range/choices. Raises `ConfigError` naming the field."""
    ks = knobs(cls)
    where = _where(section, name)
    if name not in ks:
        raise ConfigError(f"unknown field {clip(where)}; known: {', '.join(ks)}")
    k = ks[name]
    if isinstance(value, str) and k.type is not str:
        value = value.strip()
    if value is None or (isinstance(value, str) and k.type is not str and value.lower() in NONE_WORDS):
        if k.optional:
            return None
        raise ConfigError(f"{where}: cannot be none; expected {k.describe()}")
    try:
        if k.type is bool:
            if isinstance(value, str):
                if value.lower() not in TRUE_WORDS + FALSE_WORDS:
                    raise ValueError
                value = value.lower() in TRUE_WORDS
            elif not isinstance(value, bool):
                if value not in (0, 1):
                    raise ValueError
                value = bool(value)
        elif k.type is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                value = int(value)
            elif isinstance(value, str):
                value = int(value)
            elif not isinstance(value, int):
                raise ValueError
            if not -INT_LIMIT <= value < INT_LIMIT:  # seeds and counts go to numpy/torch/Parquet as int64
                raise ConfigError(f"{where}: {clip(value)} is out of range; expected an integer that fits "
                                  "in 64 bits")
        elif k.type is float:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"{where}: must be finite, got {value}")
        elif k.type is str:
            if not isinstance(value, str):
                raise ValueError
            if len(value) > MAX_TEXT:  # names, splits, delimiters: a megabyte of text is a mistake or an attack
                raise ConfigError(f"{where}: {clip(value, 40)} is {len(value)} characters long; the limit is "
                                  f"{MAX_TEXT}")
        elif k.type is list:
            specs = _layer_specs(value, where)
            if not specs:
                raise ConfigError(f"{where}: expected {k.describe()}, at least one, got {clip(value)}")
            value = specs
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{where}: cannot read {clip(value)} as {k.describe()}") from None
    if k.choices is not None and value not in k.choices:
        raise ConfigError(f"{where}: {clip(value)} is not {k.describe()}")
    if k.type in (int, float) and (
            (k.min is not None and value < k.min) or (k.max is not None and value > k.max)
            or (k.gt is not None and value <= k.gt)):
        raise ConfigError(f"{where}: {clip(value)} is out of range; expected {k.describe()}")
    if k.type is str and k.choices is None and value == "":
        raise ConfigError(f"{where}: must not be empty")
    return value


def validate(obj: Any, section: str | None = None) -> None:
    """Check every field of a config instance (types, ranges, choices); raises `ConfigError`."""
    for name in knobs(obj):
        cast_value(obj, name, getattr(obj, name), section)


def from_dict(cls: Any, d: dict | None, section: str | None = None, base: Any = None) -> Any:
    """An instance of `cls` from a mapping (YAML section, JSON, widgets): unknown fields refused, every value
    cast and checked; missing fields come from `base` (an instance) or the defaults."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"{section or cls.__name__}: expected a mapping of field: value, got {clip(d)}")
    ks = knobs(cls)
    unknown = [k for k in d if k not in ks]
    if unknown:
        shown = ", ".join(_where(section, str(u)) for u in unknown[:5]) + (", …" if len(unknown) > 5 else "")
        raise ConfigError(f"unknown field(s) {shown}; "
                          f"known: {', '.join(ks)}")
    vals = {k: cast_value(cls, k, v, section) for k, v in d.items()}
    return replace(base, **vals) if base is not None else cls(**vals)


def parse_assignment(cls: Any, spec: str, section: str | None = None) -> tuple[str, Any]:
    """`name=value` -> (name, typed value)."""
    if "=" not in spec:
        raise ConfigError(f"{clip(spec)}: expected name=value")
    name, value = spec.split("=", 1)
    name = name.strip()
    return name, cast_value(cls, name, value, section)


def parse_values(cls: Any, spec: str, section: str | None = None) -> tuple[str, list]:
    """`name=v1,v2,...` -> (name, [typed values]) (a sweep)."""
    if "=" not in spec:
        raise ConfigError(f"{clip(spec)}: expected name=v1,v2,...")
    name, values = spec.split("=", 1)
    name = name.strip()
    parts = [v for v in values.split(",") if v.strip()]
    if not parts:
        raise ConfigError(f"{name}: give at least one value")
    return name, [cast_value(cls, name, v, section) for v in parts]


def defaults(cls: Any) -> dict[str, Any]:
    """{field: default value} of a config dataclass."""
    out = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def check_layers(obj: Any, n_layers: int | None, library_layers: list[int] | None = None,
                 section: str | None = None) -> None:
    """Layer-valued fields against the model's depth and (when given) the layers a library holds, so a
    layer the library has no tools at is refused instead of silently decoding vanilla."""
    for name, k in knobs(obj).items():
        v = getattr(obj, name)
        if v is None:
            continue
        where = _where(section, name)
        specs = v if isinstance(v, list) else [v]
        if k.layer or k.type is list:
            for s in specs:
                if n_layers is not None:
                    try:
                        layer = resolve_layer(s, n_layers)
                    except ValueError as err:
                        raise ConfigError(f"{where}: {err}") from None
                else:
                    layer = s
                if k.layer and library_layers is not None and layer not in library_layers:
                    raise ConfigError(f"{where}={clip(s)}: the library has no tools at that layer "
                                      f"(its layers: {sorted(library_layers)})")


def to_dict(obj: Any) -> dict:
    return asdict(obj)


# --- the online knobs --------------------------------------------------------------------------------

# Steering scales beyond this swamp any residual stream (library vectors have norms of ~10-100) and overflow
# half precision; a decode that still goes non-finite is flagged in its trace (`online/health.py`).
MAX_SCALE = 1e4

ONLINE, GATE, RETRIEVAL, PREVIEW, STEER, BASELINE = (
    "decoding", "gate", "retrieval", "preview", "steering", "baselines")


@dataclass(kw_only=True)
class StirConfig:
    """Every online knob, with the reference defaults (see STIR_SPEC.md, "Online"). Validated on creation."""

    max_new_tokens: int = knob(256, int, "committed-token budget T_max", ONLINE, min=1)
    delimiter: str = knob("\n\n", str, "segment delimiter: a control point follows each", ONLINE)
    max_control_points: int | None = knob(None, int, "M: control points per problem (none: every one)",
                                          ONLINE, optional=True, min=1)
    k_retrieve: int = knob(8, int, "entries retrieved per control point (top-k cosine)", RETRIEVAL, min=1)
    min_entries: int = knob(1, int, "null when the library has fewer entries than this (see min_entries_count)",
                            RETRIEVAL, min=0)
    min_entries_count: str = knob("group", str, "what min_entries counts: group (reference) = every library entry "
                                  "at the control point, all queried layers; retrieved (ours) = the hits returned",
                                  RETRIEVAL, choices=("group", "retrieved"))
    min_sim: float | None = knob(None, float, "null when the best key similarity is below this (none: off)",
                                 RETRIEVAL, optional=True, min=-1.0)
    min_tool_m: int | None = knob(None, int, "no tool and no previews at control points m below this (the "
                                  "reference's online.min_tool_m; none: off). Its max_tool_m is max_control_points",
                                  GATE, optional=True, min=1)
    top_l: int = knob(4, int, "L: corrections previewed per control point", PREVIEW, min=1)
    probe_tokens: int = knob(4, int, "tokens decoded per preview (discarded, counted)", PREVIEW, min=1)
    probe_scale: float = knob(1.0, float, "scale of the vector while previewing", PREVIEW, min=0.0, max=MAX_SCALE)
    beta: float = knob(1.0, float, "β: weight of the value Â in the score", GATE, min=0.0)
    rho: float = knob(0.1, float, "ρ: weight of the probe gain in the score", GATE, min=0.0)
    tau_null: float = knob(0.0, float, "τ_null: commit only when the best score ≥ τ_null", GATE)
    k_scale: float = knob(1.0, float, "α = k_scale · Score of the winner", STEER, min=0.0, max=MAX_SCALE)
    positions: str = knob("last", str, "where the committed vector is added", STEER,
                          choices=("last", "segment", "last+segment"))
    center_keys: bool = knob(False, bool, "subtract the library's mean key before the cosine", RETRIEVAL)
    preview: str = knob("fork", str, "fork: rows of one batched decode over a forked cache; reprefill: "
                        "the reference's way", PREVIEW, choices=("fork", "reprefill"))
    scope: str = knob("segment", str, "segment (reference): a commit steers its segment only, later text is "
                      "re-run unsteered; persist (ours): the steered cache stays for the rest of the generation",
                      STEER, choices=("segment", "persist"))
    probe_stop: str = knob("delimiter", str, "delimiter (reference): a probe ends at the delimiter; none (ours): "
                           "it runs its full length", PREVIEW, choices=("delimiter", "none"))
    random_choice_gate: str = knob("none", str, "random_choice ablation: none (reference) commits the random "
                                   "pick unless it ties Score_null, is under τ or has α ≤ 0; null (ours) makes "
                                   "it beat the null score too", BASELINE,
                                   choices=("none", "null"))
    schedule: str = knob("continuous", str, "accepted for old configs: both values run the one scheduler, whose "
                         "tokens and decisions equal the segment-synchronous algorithm's (a test oracle)", ONLINE,
                         choices=("continuous", "sync"))
    max_preview_rows: int | None = knob(None, int, "extra slots of the pool beyond one per prompt, shared by "
                                        "probes and drivers: max(N, top_l); none or 0: top_l per prompt (the "
                                        "worst case). Never changes results: bounds the KV pool, previews wait "
                                        "for a free slot (more steps)",
                                        PREVIEW, optional=True, min=0)
    layer: int | None = knob(None, int, "restrict to one library layer (none: every layer in the library)",
                             STEER, optional=True, min=0, layer=True)
    static_scale: float = knob(1.0, float, "α of the static baselines", BASELINE, min=0.0, max=MAX_SCALE)
    seed: int = knob(0, int, "seed of the random ablations", ONLINE, min=0)

    def __post_init__(self) -> None:
        validate(self)

    def with_overrides(self, **kw: Any) -> StirConfig:
        """A copy with some fields changed (each cast and checked like `--set`)."""
        return from_dict(StirConfig, kw, base=self)


@dataclass
class PromptConfig:
    """How file tasks prompt (STIR_SPEC.md, "Prompts and scoring"). The embedded testbed keeps its own format."""

    prompt_style: str = knob("reference", str, "reference: the authors' templates (stir/data/prompts.py) with "
                             "their system message; blank_lines (ours): ask for steps separated by blank "
                             "lines, so control points fall between steps", "prompt",
                             choices=("reference", "blank_lines"))

    def __post_init__(self) -> None:
        validate(self)


RECOMMENDED_KEY = "recommended_online"
# The tool dashboard's α-sweep scales (`stir dashboard --scales`, the Library page): defined once, here.
ALPHA_SWEEP_SCALES = (0.0, 0.5, 1.0, 2.0, 4.0)


def recommended(manifest: dict | None) -> dict[str, Any]:
    """The online settings a library's manifest recommends (chosen on `val`), as {field: value}; {} if none."""
    rec = (manifest or {}).get(RECOMMENDED_KEY) or {}
    return dict(rec.get("settings") or {})


def online_config(library: Any = None, overrides: dict[str, Any] | None = None) -> StirConfig:
    """Where every entry point starts: the defaults, then the library's recommended settings, then the
    user's overrides (all validated)."""
    cfg = StirConfig()
    if library is not None:
        cfg = from_dict(StirConfig, recommended(getattr(library, "manifest", library)),
                        f"{RECOMMENDED_KEY}.settings", base=cfg)
    if overrides:
        cfg = from_dict(StirConfig, overrides, base=cfg)
    return cfg


# --- the offline knobs (Stage I mining, Stage II selection) ----------------------------------------

@dataclass(kw_only=True)
class MineConfig:
    """Stage I knobs; defaults follow the reference (STIR_SPEC.md) unless noted. Validated on creation."""

    task: str = knob("planted", str, "task to mine (a registered task name)", "data")
    split: str = knob("mine", str, "split to mine (never the evaluation split by default)", "data")
    n_problems: int = knob(64, int, "problems mined", "data", min=1)
    k_rollouts: int = knob(8, int, "K: sampled rollouts per problem", "rollouts", min=2)
    temperature: float = knob(0.7, float, "sampling temperature of the rollouts", "rollouts", gt=0.0)
    top_p: float = knob(0.95, float, "nucleus sampling mass", "rollouts", gt=0.0, max=1.0)
    max_new_tokens: int = knob(256, int, "T_mine: tokens per rollout", "rollouts", min=1)
    eta0: float = knob(0.01, float, "length penalty: R = 1[correct] - eta0 * len / T_mine", "rollouts", min=0.0)
    layers: list = knob([0.6], list, "layers to mine (int, fraction in [0, 1], or 'a/b')", "contrast")
    method: str = knob("contrastive", str, "contrastive, or random (ablation)", "contrast",
                       choices=("contrastive", "random"))
    require_correct_and_incorrect: bool = knob(True, bool, "mine a control point only when it has both",
                                               "contrast")
    k_pos: int = knob(4, int, "best correct prefixes averaged", "contrast", min=1)
    k_neg: int = knob(4, int, "worst incorrect prefixes averaged", "contrast", min=1)
    min_incorrect: int = knob(1, int, "incorrect rollouts needed at a control point", "contrast", min=0)
    pos_source: str = knob("rollout", str, "where positive states come from", "contrast",
                           choices=("rollout", "gold", "rollout_or_gold"))
    # Reference-fidelity switches (STIR_SPEC.md, knob table); each default is what the authors' code does.
    clean_prefixes: str = knob("off", str, "off (reference) | auto | on (ours): drop prefixes whose steps are "
                               "already wrong", "contrast", choices=("off", "auto", "on"))
    max_control_points: int | None = knob(8, int, "M: control points mined per problem (reference config 8; "
                                          "none: all, ours)", "contrast", optional=True, min=1)
    gold_reward: str = knob("penalised", str, "gold positive's reward: penalised (reference: 1[gold correct] - "
                            "eta0*len/T_mine) | fixed (ours: 1.0)", "contrast", choices=("penalised", "fixed"))
    drop_zero_delta: bool = knob(False, bool, "drop items with Δ = 0 (ours; the reference keeps them)", "contrast")
    random_quality: str = knob("clamp", str, "method=random: clamp (reference: q = max(0, gap), every split "
                               "kept) | drop (ours: drop q <= 0)", "contrast", choices=("clamp", "drop"))
    # Without the correct/incorrect contrast (method=random, or require_correct_and_incorrect=False):
    # reference = the first max(1, k_pos) of the shuffled / reward-ranked rollouts are positives and the next
    # (random) or last (ranked) max(1, k_neg) negatives; disjoint (ours) = equal halves.
    split_rule: str = knob("reference", str, "positives/negatives without the correct/incorrect contrast: "
                           "reference (first k_pos, next/last k_neg) | disjoint (ours: halves)", "contrast",
                           choices=("reference", "disjoint"))
    top_c: int = knob(256, int, "C: items kept (by quality)", "contrast", min=1)
    problems_per_batch: int = knob(8, int, "problems decoded together (and per checkpoint)", "rollouts", min=1)
    capture: str = knob("decode", str, "decode (by tokens, one pass) | reprefill (by tokens, one forward per "
                        "prefix) | retokenize (the reference's: the text cut at each delimiter, re-tokenized with "
                        "the prompt, one forward each; offline/capture.py)", "rollouts",
                        choices=("decode", "reprefill", "retokenize"))
    seed: int = knob(0, int, "seed of the split sample and the rollouts", "data", min=0)

    def __post_init__(self) -> None:
        validate(self, "mine")


@dataclass(kw_only=True)
class SelectConfig:
    """Stage II knobs (STIR_SPEC.md): budget B, method dpp|top|random, λ, ε, min_per_control_point, force_mode."""

    budget: int = knob(256, int, "B: entries kept", "select", min=1)
    method: str = knob("dpp", str, "quality-DPP, top quality, or random", "select", choices=("dpp", "top", "random"))
    lam: float = knob(0.5, float, "λ: quality weight of the DPP kernel", "select", min=0.0)
    eps: float = knob(1e-4, float, "ε: kernel diagonal jitter", "select", min=0.0)
    min_per_control_point: int = knob(0, int, "entries kept per control point at least", "select", min=0)
    force_mode: str = knob("reference", str, "with min_per_control_point: reference (the DPP on the rest, blind "
                           "to the forced entries) | conditioned (ours: conditioned on them)", "select",
                           choices=("reference", "conditioned"))

    def __post_init__(self) -> None:
        validate(self, "select")
