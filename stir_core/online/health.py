"""Numerical health of a steered decode, read from what the public decode returns (its traces).

A steering vector of absurd norm, or an absurd scale (`--set static_scale=1e300`, a hash-valid library whose
vectors have norm ~1e37), overflows the residual stream: the logits go NaN/inf and greedy decoding keeps
emitting some token, so the output looks like text. We do not clamp (that would change what the method
does); we record it, so the trace and the summary say the output is garbage:

    trace_problems(trace)   -> [str]   what is wrong with one trace (empty when healthy)
    flag(traces)            -> int     adds those lines to each trace's `warnings`; how many were flagged

Checked per generated token: its log-prob (non-finite iff the logits were) and the norm of what was added
at it (`added_norm`, α·‖v‖: non-finite, or above `MAX_ADDED_NORM`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from stir_core.online.trace import Trace

# Residual streams of the models we steer have norms of 1..1e3 (the demo library's corrections: median 86);
# adding a vector a thousand times beyond that already swamps the model. Only flagged, never clamped.
MAX_ADDED_NORM = 1e6


def trace_problems(trace: Trace) -> list[str]:
    """One line per kind of problem in `trace` (token indices of the first occurrence)."""
    out = []
    bad_lp = [t.index for t in trace.tokens if not math.isfinite(t.logprob)]
    if bad_lp:
        out.append(f"non-finite logits at {len(bad_lp)} of {len(trace.tokens)} tokens (first: token {bad_lp[0]}); "
                   "the output is not meaningful (steering overflowed the activations?)")
    big = [(t.index, t.added_norm) for t in trace.tokens] + [(d.token_index, d.added_norm) for d in trace.decisions]
    big = [(i, x) for i, x in big if not math.isfinite(x) or x > MAX_ADDED_NORM]
    if big:
        out.append(f"exploding steering: added a vector of norm {big[0][1]:.3g} at token {big[0][0]} "
                   f"(sane: <= {MAX_ADDED_NORM:g}); lower the scale or check the library's vector norms")
    return out


def flag(traces: Iterable[Trace]) -> int:
    """Record `trace_problems` in each trace's warnings (once); returns the number of traces flagged."""
    n = 0
    for t in traces:
        lines = trace_problems(t)
        if lines:
            n += 1
            t.warnings.extend(x for x in lines if x not in t.warnings)
    return n
