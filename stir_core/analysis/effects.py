"""The effect of a commit over time: how far the steered run's next-token distribution is from vanilla's,
token by token after each commit.

Both distributions are computed on the *steered* text by teacher forcing, so the difference isolates the
vector (not the diverging prefix): one forward of the model over prompt + steered completion with the
trace's additions put back (the steered distributions), and one without them (vanilla's distribution on
the steered prefix). Where a vector was added is read from the trace (`TokenRecord.tool` marks each token a
vector was added at; the governing `GateDecision` gives the library entry, α and layer), so the steered
forward reproduces the decode: `logprob_error` reports the largest gap between the recomputed and the
recorded log-probabilities of the generated tokens (float noise, ~1e-5, when the recomputation is exact).

Under the reference's `scope="segment"` a commit steers its own segment and later text is re-run
unsteered, so each segment's steered distributions come from a forward with only its commit's additions
(one forward per commit); under `scope="persist"` one forward with every addition (causal attention gives
each position exactly the additions before it).

Positions: generated token i was chosen from the distribution at sequence position `n_prompt + i - 1`;
`kl[i]` is KL(steered ‖ vanilla) of *that* distribution (so a commit at delimiter token t first shows at
token t + 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from stir_core.online.trace import Trace
from stir_core.runtime.backend import DEFAULT_HOOK_POINT, hook_name


@dataclass(kw_only=True)
class CommitEffect:
    """One committed tool's effect on the tokens it governs (after its delimiter, to its segment's end)."""

    m: int  # control point
    tool: str
    alpha: float
    layer: int
    token_index: int  # the delimiter token the commit was made at
    tokens: list[int]  # generated-token indices after the commit: token_index + 1 ..
    kl: list[float]  # KL(steered ‖ vanilla) of the distribution each of `tokens` was chosen from (nats)
    top_changed: list[bool]  # per token: the two distributions' top tokens differ
    steered_top: list[str]  # the steered distribution's top token (text)
    vanilla_top: list[str]  # vanilla's top token on the same (steered) prefix


@dataclass(kw_only=True)
class TraceEffects:
    """Per generated token of one trace, and per commit."""

    kl: list[float]  # [n_tokens] KL(steered ‖ vanilla) of the distribution token i was chosen from
    top_changed: list[bool]  # [n_tokens]
    commits: list[CommitEffect] = field(default_factory=list)
    logprob_error: float = 0.0  # max |recomputed steered log p - recorded log p| over the generated tokens


class EffectsUnavailable(ValueError):
    """The trace's additions cannot be put back (e.g. the random-vector ablation records no vector)."""


def _additions(trace: Trace, library: Any) -> list[tuple[int, int, int, torch.Tensor]]:
    """(generated-token index, control point m, layer, α·vector) of every addition the decode made."""
    commits = [d for d in trace.decisions if d.committed]
    out = []
    for tok in trace.tokens:
        if tok.tool is None:
            continue
        # the commit governing this token: the last one whose span (its delimiter .. + commit_tokens) holds it
        # (as `views.token_interventions` reads it; not imported: views -> dashboard -> effects would cycle)
        d = next((d for d in reversed(commits) if d.token_index <= tok.index <= d.token_index + d.commit_tokens),
                 None)
        if d is None or d.chosen_entry is None or d.layer is None or tok.tool != d.chosen:
            raise EffectsUnavailable(
                f"token {tok.index} carries the addition {tok.tool!r}, which no committed library entry "
                "accounts for (random-vector and static ablations do not record their vectors)")
        if library is None:
            raise EffectsUnavailable("the trace committed tools but no library was given")
        out.append((tok.index, d.m, int(d.layer), float(d.alpha) * library.vectors[d.chosen_entry].float()))
    return out


@torch.no_grad()
def teacher_forced_logits(model: Any, ids: list[int], adds: list[tuple[int, int, torch.Tensor]] = (),
                          hook_point: str = DEFAULT_HOOK_POINT) -> torch.Tensor:
    """Logits `[len(ids), d_vocab]` (float32, CPU) of one whole-sequence forward of `ids`, with each
    `(position, layer, vector [d_model])` of `adds` added to the residual stream at `hook_point` of `layer`."""
    by_layer: dict[int, list[tuple[int, torch.Tensor]]] = {}
    for pos, layer, vec in adds:
        by_layer.setdefault(layer, []).append((pos, vec))
    hooks = []
    for layer, items in by_layer.items():
        def fn(x, hook, items=items):  # x: [1, pos, d_model]
            x = x.clone()
            for pos, vec in items:
                x[:, pos] += vec.to(x.device, x.dtype)
            return x

        hooks.append((hook_name(layer, hook_point), fn))
    x = torch.tensor([ids], dtype=torch.long, device=model.device)
    with model.bridge.hooks(fwd_hooks=hooks):
        logits = model.bridge(x, return_type="logits")
    return logits[0].float().cpu()


def kl_rows(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax p ‖ softmax q) per row, in nats. p_logits, q_logits: [rows, d_vocab] -> [rows]."""
    lp, lq = torch.log_softmax(p_logits.double(), -1), torch.log_softmax(q_logits.double(), -1)
    return (lp.exp() * (lp - lq)).sum(-1).clamp(min=0.0).float()


SCOPES = ("segment", "persist")


def trace_effects(model: Any, trace: Trace, library: Any = None, scope: str = "segment") -> TraceEffects:
    """KL(steered ‖ vanilla) per generated token of `trace` and per commit (see the module docstring).

    `trace.prompt` is the formatted prompt the decode saw; `scope` is the decode's `StirConfig.scope`:
    "segment" (the reference: a commit steers its own segment, later text is re-run unsteered) puts back
    only the governing commit's additions for each segment; "persist" keeps every earlier commit's too.
    One vanilla forward, plus one per commit. Raises `EffectsUnavailable` when the trace's additions are
    not all library entries (the random-vector and static ablations)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; use one of {SCOPES}")
    additions = _additions(trace, library)
    prompt = model.encode(trace.prompt)
    gen = [t.token_id for t in trace.tokens]
    n0, n = len(prompt), len(gen)
    hook = getattr(library, "hook_point", None) or DEFAULT_HOOK_POINT
    vanilla = teacher_forced_logits(model, prompt + gen, (), hook)[n0 - 1: n0 - 1 + n]  # [n, d_vocab]
    spans = {d.m: list(range(d.token_index + 1, min(n, d.token_index + 1 + d.commit_tokens)))
             for d in trace.decisions if d.committed}
    if scope == "persist":  # causal: one forward with every addition gives each position its own past
        adds = [(n0 + i, layer, vec) for i, _, layer, vec in additions]
        steered = teacher_forced_logits(model, prompt + gen, adds, hook)[n0 - 1: n0 - 1 + n] if adds else vanilla
    else:  # each segment saw only its own commit (earlier segments were re-run unsteered)
        steered = vanilla.clone()
        for m, span in spans.items():
            adds = [(n0 + i, layer, vec) for i, mm, layer, vec in additions if mm == m]
            if adds and span:
                steered[span] = teacher_forced_logits(model, prompt + gen, adds, hook)[n0 - 1: n0 - 1 + n][span]
    kl = kl_rows(steered, vanilla) if n else torch.zeros(0)
    s_top, v_top = steered.argmax(-1), vanilla.argmax(-1)
    changed = [bool(c) for c in (s_top != v_top).tolist()]
    recomputed = torch.log_softmax(steered.double(), -1)[torch.arange(n), torch.tensor(gen, dtype=torch.long)]
    recorded = torch.tensor([t.logprob for t in trace.tokens], dtype=torch.float64)
    err = float((recomputed - recorded).abs().max()) if n else 0.0
    kl_list = [float(x) for x in kl]
    commits = [
        CommitEffect(
            m=d.m, tool=str(d.chosen), alpha=float(d.alpha), layer=int(d.layer if d.layer is not None else -1),
            token_index=d.token_index, tokens=spans[d.m], kl=[kl_list[i] for i in spans[d.m]],
            top_changed=[changed[i] for i in spans[d.m]],
            steered_top=[model.decode([int(s_top[i])]) for i in spans[d.m]],
            vanilla_top=[model.decode([int(v_top[i])]) for i in spans[d.m]])
        for d in trace.decisions if d.committed
    ]
    return TraceEffects(kl=kl_list, top_changed=changed, commits=commits, logprob_error=err)
