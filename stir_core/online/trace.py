"""The gate trace: plain records of every decision and every token, serialisable to JSON and pandas.

A `Trace` is what the CLI saves and the app draws ("gate firing per token"). Records hold only plain
Python values so that `json.dumps(dataclasses.asdict(trace))` always works.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

import pandas as pd

from stir_core.io import jsonio


@dataclass(kw_only=True)
class Candidate:
    """One retrieved library entry at a control point (an anchor or a correction)."""

    entry: int  # row in the library
    tool_id: str
    kind: str  # "correction" | "anchor"
    layer: int
    sim: float  # cosine similarity of the query to the entry's key
    quality: float  # q
    value: float  # Â = sim * q
    previewed: bool = False
    probe_text: str | None = None
    probe_logprob: float | None = None  # mean token log-prob of the probe
    gain: float | None = None  # probe_logprob - null probe_logprob
    score: float | None = None  # beta * value + rho * gain


@dataclass(kw_only=True)
class GateDecision:
    """The decision at control point m (after the m-th segment) of one row."""

    m: int
    token_index: int  # index of the delimiter token among the generated tokens
    query_layers: list[int]
    candidates: list[Candidate] = field(default_factory=list)
    null_value: float = 0.0  # Â_null = max(0, best anchor Â)
    null_probe_text: str | None = None
    null_probe_logprob: float | None = None
    score_null: float = 0.0
    chosen: str | None = None  # tool id committed, None for the null action
    chosen_entry: int | None = None
    reason: str = "skipped"  # a `gate.Reason` value once decided ("skipped": never decided)
    alpha: float = 0.0  # scale of the committed vector
    layer: int | None = None  # layer of the committed vector
    added_norm: float = 0.0  # ||alpha * vector||
    positions: str = "last"
    probe_tokens: int = 0  # tokens spent on previews here (discarded, counted)
    commit_tokens: int = 0  # tokens of the segment decoded after this decision

    @property
    def committed(self) -> bool:
        return self.chosen is not None


@dataclass(kw_only=True)
class TokenRecord:
    """One generated token: what it is, its log-prob, its segment, what was added at it."""

    index: int
    token_id: int
    text: str
    logprob: float
    segment: int  # 0-based segment the token belongs to (the delimiter closes its segment)
    tool: str | None = None  # tag of the vector added at this token, if any
    added_norm: float = 0.0
    is_delimiter: bool = False


@dataclass(kw_only=True)
class Trace:
    """Everything one method did on one prompt."""

    method: str
    prompt: str
    completion: str
    tokens: list[TokenRecord] = field(default_factory=list)
    decisions: list[GateDecision] = field(default_factory=list)
    probe_tokens: int = 0
    example_id: str | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. a library mined on another model (allowed)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def interventions(self) -> int:
        return sum(d.committed for d in self.decisions)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return jsonio.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> Trace:
        decisions = [GateDecision(**{**g, "candidates": [Candidate(**c) for c in g["candidates"]]})
                     for g in d.get("decisions", [])]
        tokens = [TokenRecord(**t) for t in d.get("tokens", [])]
        plain = {f.name: d[f.name] for f in fields(cls) if f.name in d and f.name not in ("tokens", "decisions")}
        return cls(**plain, tokens=tokens, decisions=decisions)

    @classmethod
    def from_json(cls, s: str) -> Trace:
        return cls.from_dict(json.loads(s))

    def tokens_frame(self) -> pd.DataFrame:
        cols = [f.name for f in fields(TokenRecord)]
        return pd.DataFrame([asdict(t) for t in self.tokens], columns=cols)

    def decisions_frame(self) -> pd.DataFrame:
        """One row per decision (candidates left out; see `candidates_frame`)."""
        rows = []
        for d in self.decisions:
            row = {k: v for k, v in asdict(d).items() if k != "candidates"}
            row["n_candidates"] = len(d.candidates)
            rows.append(row)
        cols = [f.name for f in fields(GateDecision) if f.name != "candidates"] + ["n_candidates"]
        return pd.DataFrame(rows, columns=cols)

    def candidates_frame(self) -> pd.DataFrame:
        """One row per (decision, candidate), with the decision's m and outcome."""
        rows = [{"m": d.m, "token_index": d.token_index, "score_null": d.score_null, "reason": d.reason,
                 "won": c.tool_id == d.chosen, **asdict(c)} for d in self.decisions for c in d.candidates]
        cols = ["m", "token_index", "score_null", "reason", "won"] + [f.name for f in fields(Candidate)]
        return pd.DataFrame(rows, columns=cols)


def diff_mask(reference: list[int], tokens: list[int]) -> list[bool]:
    """Per token of `tokens`: True where it differs from `reference` at the same position (or the
    reference has ended)."""
    return [i >= len(reference) or t != reference[i] for i, t in enumerate(tokens)]
