"""One decoding engine for every stage: mining rollouts, previews, commits and baselines.

Batched incremental decoding over a `TransformerBridge` and a static slot pool (`stir_core/runtime/slots.py`):
each row of a `DecodeState` is one slot with its own length; every forward feeds one token per row (rows
fed nothing write to the pool's scratch column), at the row's own position, so rows advance independently
and a position is never left as a masked hole.

Vocabulary (per row b):
- a **steer** adds `scale * vector` at its hook point (resid_post of `layer` unless its library's manifest
  says otherwise: `Steer.hook`), at the last prefix token (`last`:
  the delimiter is re-run with the vector, overwriting its own position in place), at every token generated
  in the segment (`segment`), or both;
- a **capture** records resid_post at chosen layers whenever a generated token completes `capture_at`
  (the segment delimiter): the control-point states, taken from the decode itself, no extra forward;
- a **fork** copies rows' filled ranges (repeats allowed) into free slots of the same pool
  (`append_copies`), to preview continuations; a **rollback** sets a row's length.

The per-token protocol (record the chosen token, EOS ends the row, one capture per delimiter the token
completes, from the forward that fed it) is written once, `Row.accept` and `Row.capture`, and called by the
one decode loop, `stir_core/runtime/scheduler.py` (mining's rollouts, `generate`, every method).

Steering and capture are data (`stir_core/runtime/steering.py`): each state carries per-slot steer buffers
and each forward says which slots' buffers are live; one hook per hook point, installed once, reads them.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from stir_core.runtime.backend import DEFAULT_HOOK_POINT, Backend, hook_name
from stir_core.runtime.graphs import GraphMismatch, GraphStep, bucket_for, positions_for
from stir_core.runtime.model import LoadedModel
from stir_core.runtime.sampling import sample
from stir_core.runtime.segment import TextStream
from stir_core.runtime.slots import SlotCache
from stir_core.runtime.steering import HookSet, Live, SteerSlots

DELIMITER = "\n\n"

POSITIONS = ("last", "segment", "last+segment")


@dataclass
class Steer:
    """Add `scale * vector` at hook `hook` (a library manifest's `hook_point` template, resid_post by
    default) of `layer`, in one row. `tag` names it in traces."""

    layer: int
    vector: torch.Tensor  # [d_model]
    scale: float = 1.0
    positions: str = "last"
    tag: str = ""
    hook: str = DEFAULT_HOOK_POINT

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"unknown steer positions {self.positions!r}; use one of {POSITIONS}")
        hook_name(self.layer, self.hook)  # a bad template fails here, not mid-decode

    @property
    def at_last(self) -> bool:
        return self.positions in ("last", "last+segment")

    @property
    def at_segment(self) -> bool:
        return self.positions in ("segment", "last+segment")

    @property
    def added_norm(self) -> float:
        return float(abs(self.scale) * self.vector.float().norm())


@dataclass
class Sampling:
    """Seeded sampling; `None` in place of a Sampling means greedy."""

    temperature: float = 0.7
    top_p: float = 0.95

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 (pass sampling=None for greedy decoding)")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")


@dataclass
class Capture:
    """States at a control point: the token that completed the delimiter, and resid_post there."""

    token_index: int  # index into the row's generated tokens
    states: torch.Tensor  # [n_capture_layers, d_model], float32, on CPU


@dataclass(kw_only=True)
class Row:
    """Everything one row has generated. `added[i]` is (tag, norm) of what was added at generated token i.

    `stream` holds the row's text and control points (`stir_core.runtime.segment`): `pieces[i]` is the text token i
    added, and `"".join(pieces) == tokenizer.decode(tokens)` once the row is finished.
    """

    prompt: list[int]
    stream: TextStream
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    added: list[tuple[str, float] | None] = field(default_factory=list)
    captures: list[Capture] = field(default_factory=list)
    finished: bool = False  # EOS seen: the row never continues
    generator: torch.Generator | None = None
    seed: int | None = None  # the row's sampling seed (the `counter` sampler draws from it and the step)

    @property
    def pieces(self) -> list[str]:
        return self.stream.pieces

    @property
    def text(self) -> str:
        return self.stream.text

    @property
    def control_points(self) -> int:
        return self.stream.control_points

    def clone(self) -> Row:
        gen = None
        if self.generator is not None:
            gen = torch.Generator(device=self.generator.device)
            gen.set_state(self.generator.get_state())
        return Row(prompt=self.prompt, stream=self.stream.copy(), tokens=list(self.tokens),
                   logprobs=list(self.logprobs), added=list(self.added), captures=list(self.captures),
                   finished=self.finished, generator=gen, seed=self.seed)

    def push(self, token: int, logprob: float, added: tuple[str, float] | None) -> int:
        """Record one generated token; returns how many delimiter occurrences it completed."""
        self.tokens.append(token)
        self.logprobs.append(logprob)
        self.added.append(added)
        return self.stream.push(token)

    # ---- the per-token protocol, written once: the decode loop (`runtime/scheduler.py`) calls these
    def accept(self, token: int, logprob: float, steer: Steer | None, eos: int | None) -> int:
        """Record a chosen token (with what `steer` adds there when it acts at generated tokens); EOS ends
        the row. Returns how many delimiter occurrences it completed (its control points)."""
        ends = self.push(token, logprob, (steer.tag, steer.added_norm) if steer is not None and steer.at_segment
                         else None)
        if eos is not None and token == eos:
            self.finished = True
        return ends

    def capture(self, ends: int, captured: dict[int, torch.Tensor], b: int, layers: Sequence[int]) -> None:
        """Once the last accepted token has been fed (batch row `b` of the forward that returned `captured`
        `{layer: [batch, t, d_model]}`): one capture per delimiter it completed (a token holding two
        delimiters gives two), resid_post at `layers`."""
        if ends and captured:
            states = torch.stack([captured[layer][b, -1].cpu() for layer in layers])
            self.captures += [Capture(len(self.tokens) - 1, states)] * ends

    def truncate(self, n_tokens: int, stream: TextStream) -> None:
        """Roll the row back to its first `n_tokens` tokens (`stream` is a snapshot taken there)."""
        del self.tokens[n_tokens:], self.logprobs[n_tokens:], self.added[n_tokens:]
        self.captures = [c for c in self.captures if c.token_index < n_tokens]
        self.stream = stream
        self.finished = False


# Positions a new pool gets beyond its longest prompt; it grows (a copy) only past them.
HEADROOM = 64
# Graph pools (and their captured steps) kept per engine, most recently used first: bounds their memory.
GRAPH_POOLS = 4


@dataclass(kw_only=True)
class DecodeState:
    """A batch in flight: one slot per row in a static pool, each slot's length, next-token logits, rows.

    `lengths` `[batch]` long on CPU: positions `[0, length)` of the row's slot hold its prompt and fed
    tokens; `logits` `[batch, d_vocab]` float32, each row's next-token logits.
    """

    cache: SlotCache
    lengths: torch.Tensor
    logits: torch.Tensor
    rows: list[Row]
    steer: SteerSlots
    capture_layers: tuple[int, ...] = ()
    delimiter: str = DELIMITER
    graph: bool = False  # the pool is a bucketed graph pool (`Engine.graphs`): steps run a `GraphStep`

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(kw_only=True)
class GenerateResult:
    texts: list[str]
    tokens: list[list[int]]
    logprobs: list[list[float]]
    captures: list[list[Capture]]
    rows: list[Row]

    @classmethod
    def of(cls, rows: list[Row]) -> GenerateResult:
        return cls(texts=[r.text for r in rows], tokens=[r.tokens for r in rows],
                   logprobs=[r.logprobs for r in rows], captures=[r.captures for r in rows], rows=rows)


@dataclass(kw_only=True)
class ControlPoint:
    """A row that just completed its m-th segment. `states[layer]` is resid_post at the delimiter [d_model]."""

    row: int
    m: int
    token_index: int
    text: str
    states: dict[int, torch.Tensor]


GRAPH_MODES = ("cuda", "eager", "off")
SAMPLERS = ("generator", "counter")


def _env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    """Environment variable `name` if set (one of `choices`, else one line naming it), else `default`."""
    mode = os.environ.get(name, "").strip().lower()
    if not mode:
        return default
    if mode not in choices:
        raise ValueError(f"{name}={mode!r}: use one of {', '.join(choices)}")
    return mode


def graph_mode(device: str | torch.device) -> str:
    """How decode steps run: `STIR_GRAPHS` (cuda | eager | off) if set, else "cuda" on a CUDA device and
    "off" elsewhere. "eager" runs the captured step's function without capturing (what CPU tests check);
    "off" is the plain eager step (the switch to use if a CUDA graph misbehaves)."""
    cuda = torch.device(device).type == "cuda"
    mode = _env_choice("STIR_GRAPHS", GRAPH_MODES, "cuda" if cuda else "off")
    if mode == "cuda" and not cuda:
        raise ValueError(f"STIR_GRAPHS=cuda needs a CUDA device; the model is on {device}")
    return mode


def sampler_mode(device: str | torch.device) -> str:
    """`STIR_SAMPLER` (generator | counter) if set, else "counter" on a CUDA device (per-row generators
    cost one launch and one sync per row per step there) and "generator" elsewhere (the CPU results and
    libraries in this repository were sampled with it)."""
    return _env_choice("STIR_SAMPLER", SAMPLERS, "counter" if torch.device(device).type == "cuda" else "generator")


class Engine:
    """The decode primitives over a fixed slot pool: prefill into free slots, copy and move slots, one
    step (a captured graph on CUDA), choose the next tokens, roll back; the loop that drives them is
    `stir_core/runtime/scheduler.py`."""

    def __init__(self, model: LoadedModel):
        self.model = model
        self.backend = Backend(model.bridge)
        self.device = model.device
        self._decode_cache: dict = {}  # id windows -> text, shared by every row's detokenizer
        self.forwards = 0  # model forwards run (sequential steps): what the benchmarks count
        self.row_positions = 0  # rows x new positions computed, pads and idle rows included: a CPU's work
        # The largest slot pool a forward ran over (slots, positions): what bounds the KV memory.
        self.peak_pool_rows = self.peak_pool_positions = 0
        # benchmarks/bench_scale.py only: materialise prefill logits for every position, as the engine did
        # before (to measure what keeping only the last position saves).
        self.legacy_prefill_logits = False
        self.hooks = HookSet.for_bridge(model.bridge)
        # Static-shape steps (`stir_core/runtime/graphs.py`): "cuda" captures a CUDA graph per bucket (the
        # default on CUDA), "eager" runs the same step function eagerly (CPU tests), "off" the plain step.
        self.graphs = graph_mode(self.device)
        self._graph_pools: OrderedDict[tuple[int, int], SlotCache] = OrderedDict()
        self._graph_steers: dict[tuple[int, int], SteerSlots] = {}  # a graph reads these very buffers
        self._graph_steps: dict[tuple, GraphStep] = {}
        self.graph_log: list[str] = []  # one line per capture: bucket, positions, seconds
        # False: a step whose graph is not captured yet runs eagerly instead of capturing it (the app
        # captures in the background, `warm_graphs`, and decodes eagerly until the graphs are ready).
        self.graph_capture = True
        self.graphs_off_reason: str | None = None  # why graphs were turned off mid-run (said, never silent)
        # How seeded rows sample (`stir_core/runtime/sampling.py`): "generator" (a torch generator per row,
        # one multinomial each) or "counter" (the whole batch in one draw; the default on CUDA).
        self.sampler = sampler_mode(self.device)

    # ---- rows and text -----------------------------------------------------------------------------
    def new_stream(self, delimiter: str = DELIMITER) -> TextStream:
        return TextStream.new(self.model.tokenizer, delimiter, self._decode_cache)

    def generator(self, seed: int) -> torch.Generator:
        """A row's own random stream, on the model's device (where its token is drawn)."""
        return torch.Generator(device=self.device).manual_seed(int(seed))

    def new_row(self, prompt: Sequence[int], delimiter: str = DELIMITER, seed: int | None = None) -> Row:
        return Row(prompt=list(prompt), stream=self.new_stream(delimiter),
                   generator=None if seed is None else self.generator(seed), seed=seed)

    @staticmethod
    def finish(rows: Sequence[Row]) -> None:
        """Release text withheld by the detokenizers (an incomplete character at the very end)."""
        for r in rows:
            r.stream.finish()

    # ---- low level -------------------------------------------------------------------------------
    @torch.no_grad()
    def _forward(self, cache: SlotCache, input_ids: torch.Tensor, qpos: torch.Tensor,
                 steer: SteerSlots | None, live: torch.Tensor | None, capture_layers: Sequence[int],
                 keep: str = "last", offset: int = 0):
        """Feed `input_ids` `[batch, t]` at positions `qpos` `[batch, t]` (-1: nothing fed) of `cache`'s slots.

        Batch row b is slot `offset + b` (the pool's slots are read as a view, no gather). Rows with
        `live[b]` get their slot's steer (`steer`) added at its hook point at every fed position.
        Returns (logits [batch, 1, vocab] float32 — the last position's; [batch, t, vocab] for keep="all";
        None for keep="none" —, {layer: resid_post [batch, t, d_model]}).
        """
        ctx = Live(capture={hook_name(layer): layer for layer in capture_layers})
        names = list(ctx.capture)
        if steer is not None and live is not None and bool(live.any()):
            ctx.steer, ctx.gain = steer, steer.scales[: len(live)] * live.to(steer.scales.device, torch.float32)
            names += list(steer.vectors)
        self.hooks.need(names)
        self.forwards += 1
        self.row_positions += input_ids.numel()
        self.hooks.live = ctx
        try:
            logits = self.backend.forward(input_ids, qpos, cache, keep=keep, offset=offset)
        finally:
            self.hooks.live = None
        self.peak_pool_rows = max(self.peak_pool_rows, cache.n_slots)
        self.peak_pool_positions = max(self.peak_pool_positions, cache.capacity)
        return (None if logits is None else logits.float()), ctx.captured

    def _padded(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids `[batch, width]` on the model's device and their positions `[batch, width]`
        (0.. for each sequence's tokens, -1 for padding)."""
        width = max(len(p) for p in seqs)
        ids = torch.full((len(seqs), width), self.model.pad_token_id, dtype=torch.long)
        qpos = torch.full((len(seqs), width), -1, dtype=torch.long)
        for b, p in enumerate(seqs):
            ids[b, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            qpos[b, width - len(p):] = torch.arange(len(p))
        return ids.to(self.device), qpos

    def new_pool(self, n_slots: int, longest: int) -> SlotCache:
        return self.backend.new_cache(n_slots, longest + HEADROOM)

    @torch.no_grad()
    def forward_states(self, sequences: Sequence[Sequence[int]], layers: Sequence[int]) -> list[torch.Tensor]:
        """Teacher-forced states: one left-padded forward over token sequences, no logits.

        Returns per sequence a tensor [len(seq), len(layers), d_model] of resid_post (float32, CPU).
        """
        ids, qpos = self._padded(sequences)
        width = ids.shape[1]
        _, cap = self._forward(self.new_pool(len(sequences), width), ids, qpos, None, None, tuple(layers),
                               keep="none")
        stacked = torch.stack([cap[layer].cpu() for layer in layers], dim=2)  # [batch, width, layers, d]
        return [stacked[b, width - len(x):] for b, x in enumerate(sequences)]

    # ---- a fixed pool: rows are its occupied prefix ---------------------------------------------------
    def empty_state(self, n_slots: int, capacity: int, capture_layers: Sequence[int] = (),
                    delimiter: str = DELIMITER) -> DecodeState:
        """A state with no rows over a fixed pool of `n_slots` slots × `capacity` positions: rows join with
        `add_rows` / `append_copies` and leave with `compact`; the pool is never rebuilt (memory S × T).

        With graphs on (CUDA), the pool is a graph pool: `bucket_for(n_slots)` slots × `positions_for(capacity)`
        positions, kept across requests with its steer buffers (a captured step reads those very tensors),
        the `GRAPH_POOLS` most recently used kept; each step replays the bucket's captured graph.
        """
        empty = dict(lengths=torch.zeros(0, dtype=torch.long), logits=torch.zeros(0, 0), rows=[],
                     capture_layers=tuple(capture_layers), delimiter=delimiter)
        if self.graphs == "off":
            return DecodeState(cache=self.backend.new_cache(n_slots, capacity, lazy_zero=True),
                               steer=SteerSlots(n_slots, self.model.d_model, self.device), **empty)
        key = (bucket_for(n_slots), positions_for(capacity))
        if key in self._graph_pools:
            self._graph_pools.move_to_end(key)
        else:
            while len(self._graph_pools) >= GRAPH_POOLS:  # drop the least recently used pool and its graphs
                _, old = self._graph_pools.popitem(last=False)
                self._graph_steers.pop((old.n_slots, old.capacity), None)
                self._graph_steps = {k: v for k, v in self._graph_steps.items() if k[0] != id(old)}
            self._graph_pools[key] = self.backend.new_cache(*key, fixed=True)
            self._graph_steers[key] = SteerSlots(key[0], self.model.d_model, self.device)
        steer = self._graph_steers[key]
        for b in range(steer.n_slots):
            steer.set(b, None)
        return DecodeState(cache=self._graph_pools[key], steer=steer, graph=True, **empty)

    def _append(self, state: DecodeState, lengths: torch.Tensor, logits: torch.Tensor, rows: Sequence[Row]) -> None:
        if len(state.rows) + len(rows) > state.cache.n_slots:
            raise RuntimeError(f"{len(state.rows)} + {len(rows)} rows overrun a pool of {state.cache.n_slots} slots")
        state.lengths = torch.cat([state.lengths, lengths])
        state.logits = logits if not state.rows else torch.cat([state.logits, logits.to(state.logits.device)])
        state.rows.extend(rows)

    def add_rows(self, state: DecodeState, prompts: Sequence[Sequence[int]],
                 seeds: Sequence[int] | None = None) -> None:
        """Prefill `prompts` (token ids) into the next free slots of `state`'s fixed pool, in one forward over
        those slots only (continuous batching: a waiting prompt takes a slot a finished row left)."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("add_rows needs at least one non-empty prompt")
        n = len(state.rows)
        if n + len(prompts) > state.cache.n_slots:
            raise RuntimeError(f"{n} + {len(prompts)} rows overrun a pool of {state.cache.n_slots} slots")
        for b in range(n, n + len(prompts)):
            state.steer.set(b, None)
        ids, qpos = self._padded(prompts)
        keep = "all" if self.legacy_prefill_logits else "last"  # benchmarks/bench_scale.py's old prefill
        logits, _ = self._forward(state.cache, ids, qpos, None, None, (), keep=keep, offset=n)  # new slots only
        rows = [self.new_row(p, state.delimiter, None if seeds is None else seeds[i]) for i, p in enumerate(prompts)]
        self._append(state, torch.tensor([len(p) for p in prompts], dtype=torch.long), logits[:, -1], rows)

    def append_copies(self, state: DecodeState, src: Sequence[int]) -> list[int]:
        """New rows at the next free slots, copies of rows `src` (their slots' filled ranges, lengths, logits,
        steers, records): a fork into free slots of the fixed pool. Returns the new rows' indices."""
        n = len(state.rows)
        dst = list(range(n, n + len(src)))
        s = torch.tensor(list(src), dtype=torch.long)
        if n + len(src) > state.cache.n_slots:
            raise RuntimeError(f"{n} + {len(src)} rows overrun a pool of {state.cache.n_slots} slots")
        state.cache.copy_slots(s, torch.tensor(dst, dtype=torch.long), int(state.lengths[s].max()))
        state.steer.copy(src, dst)
        self._append(state, state.lengths[s], state.logits[s.to(state.logits.device)],
                     [state.rows[i].clone() for i in src])
        return dst

    def compact(self, state: DecodeState, order: Sequence[int]) -> None:
        """Keep rows `order` (distinct), row j becoming the old row `order[j]`: only rows that change slot
        move (their filled range, in one gather); the freed slots past the new prefix take newcomers."""
        moved = [(i, j) for j, i in enumerate(order) if i != j]
        if moved:
            s = torch.tensor([i for i, _ in moved], dtype=torch.long)
            d = torch.tensor([j for _, j in moved], dtype=torch.long)
            state.cache.copy_slots(s, d, int(state.lengths[s].max()))
            held = [state.steer.held[i] for i, _ in moved]  # read all before writing any
            for (_, j), steer in zip(moved, held, strict=True):
                state.steer.set(j, steer)
        idx = torch.tensor(list(order), dtype=torch.long)
        state.lengths = state.lengths.index_select(0, idx)
        state.logits = state.logits.index_select(0, idx.to(state.logits.device))
        state.rows = [state.rows[i] for i in order]

    def step(self, state: DecodeState, tokens: torch.Tensor, feed: torch.Tensor,
             live: torch.Tensor | None = None, replace_last: torch.Tensor | None = None
             ) -> dict[int, torch.Tensor]:
        """Feed one token per row (`feed[b]` False: nothing, the row's slot is untouched) and update
        lengths and logits.

        `live[b]`: the row's slot steer (`set_steers`) is added this step. `replace_last[b]`: the fed token
        overwrites the row's last position in place (a re-run of the delimiter with a vector added).
        Returns the captured states `{layer: [batch, 1, d_model]}`.
        """
        if replace_last is not None and bool(replace_last.any()):
            state.lengths = state.lengths - replace_last.long()
        ids = torch.where(feed, tokens, torch.full_like(tokens, self.model.pad_token_id))
        qpos = torch.where(feed, state.lengths, torch.full_like(state.lengths, -1))
        step = self._graph_for(state) if state.graph else None
        out = self._graph_step(step, state, ids, qpos, live) if step is not None else None
        if out is not None:
            logits, captured = out
        else:
            logits, captured = self._forward(state.cache, ids[:, None].to(self.device), qpos[:, None],
                                             state.steer, live, state.capture_layers)
        state.lengths = state.lengths + feed.long()
        keep = feed.to(state.logits.device)[:, None]
        state.logits = torch.where(keep, logits[:, -1], state.logits)
        return captured

    def _graph_for(self, state: DecodeState) -> GraphStep | None:
        """The captured step of a graph-pool state's bucket, pool, steer hooks and capture layers: captured
        on first use (its time one line of `graph_log`), or None while `graph_capture` is off and it is not
        captured yet (the step then runs eagerly over the same pool)."""
        if self.graphs == "off":  # turned off mid-run (`graphs_failed`): the step runs eagerly
            return None
        cache, steer = state.cache, state.steer
        key = (id(cache), cache.n_slots, cache.capacity, tuple(sorted(steer.vectors)), state.capture_layers)
        step = self._graph_steps.get(key)
        if step is None and self.graph_capture:
            try:
                step = GraphStep(self._static_forward(cache, steer, state.capture_layers), cache.n_slots,
                                 torch.device(self.device), self.graphs)
            except Exception as err:  # noqa: BLE001 - said loudly by graphs_failed; decoding goes on eagerly
                first = (str(err).strip().splitlines() or [""])[0]
                self.graphs_failed(f"capture failed: {type(err).__name__}: {first}")
                return None
            self._graph_steps[key] = step
            if step.capture_s:
                self.graph_log.append(f"captured decode step: bucket {cache.n_slots} slots x {cache.capacity} "
                                      f"positions in {step.capture_s:.2f} s")
        return step

    def graphs_failed(self, why: str) -> None:
        """A step failed to capture, or its first replay disagreed with the eager step: decode eagerly from
        now on (over the same pools), said once — a warning, a `graph_log` line, `graphs_off_reason`."""
        self.graphs, self.graphs_off_reason = "off", why
        msg = f"decode graphs off: {why}; decoding eagerly (STIR_GRAPHS=off skips the attempt)"
        self.graph_log.append(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)

    def _graph_step(self, step: GraphStep, state: DecodeState, ids: torch.Tensor, qpos: torch.Tensor,
                    live: torch.Tensor | None) -> tuple[torch.Tensor, dict[int, torch.Tensor]] | None:
        """One step of a graph-pool state through `step`: inputs padded to the bucket's slots; returns
        (logits `[rows, 1, d_vocab]`, {layer: `[rows, 1, d_model]`}), or None when the step's first replay
        disagreed with the eager step (graphs are then off; the caller runs this step eagerly)."""
        cache, steer, n = state.cache, state.steer, len(state.rows)
        if int(qpos.max()) >= cache.capacity:  # a graph pool is sized from the budget and cannot grow
            raise RuntimeError(f"graph pool of {cache.capacity} positions overrun (row at {int(qpos.max())})")
        s = cache.n_slots
        ids_s = torch.full((s, 1), self.model.pad_token_id, dtype=torch.long)
        qpos_s = torch.full((s, 1), -1, dtype=torch.long)
        ids_s[:n, 0], qpos_s[:n, 0] = ids, qpos
        gain = torch.zeros(s, device=steer.scales.device)
        if live is not None:
            gain[:n] = steer.scales[:n] * live.to(gain.device, torch.float32)
        try:
            logits, cap = step.run(ids_s.to(self.device), qpos_s.to(self.device), gain)
        except GraphMismatch as err:
            self.graphs_failed(str(err))
            return None
        self.forwards += 1
        self.row_positions += s
        return logits[:n, None], {layer: x[:n, None] for layer, x in cap.items()}

    def _static_forward(self, cache: SlotCache, steer: SteerSlots, capture_layers: Sequence[int]):
        """The step function a `GraphStep` runs: fixed pool, steer buffers and capture layers; only the
        tensors it is given (ids, positions, gain) and the buffers' contents change between calls."""
        capture = {hook_name(layer): layer for layer in capture_layers}
        self.hooks.need(list(capture) + list(steer.vectors))

        def forward(ids: torch.Tensor, qpos: torch.Tensor, gain: torch.Tensor):
            ctx = Live(capture=capture, steer=steer if steer.vectors else None,
                       gain=gain if steer.vectors else None)
            self.hooks.live = ctx
            try:
                logits = self.backend.forward(ids, qpos, cache, keep="last", grow=False)
            finally:
                self.hooks.live = None
            return logits[:, -1].float(), {layer: x[:, -1] for layer, x in ctx.captured.items()}

        return forward

    def feed_many(self, state: DecodeState, seqs: dict[int, list[int]]) -> dict[int, torch.Tensor]:
        """Feed several tokens to some rows in one forward, each at its slot's next positions (other rows
        get nothing); updates lengths and the fed rows' logits. Returns the captured states at each fed
        row's last token `{layer: [batch, d_model]}`."""
        seqs = {b: t for b, t in seqs.items() if t}
        if not seqs:
            return {}
        width = max(len(t) for t in seqs.values())
        n = len(state.rows)
        ids = torch.full((n, width), self.model.pad_token_id, dtype=torch.long)
        qpos = torch.full((n, width), -1, dtype=torch.long)
        for b, toks in seqs.items():
            ids[b, width - len(toks):] = torch.tensor(toks)
            qpos[b, width - len(toks):] = int(state.lengths[b]) + torch.arange(len(toks))
        logits, captured = self._forward(state.cache, ids.to(self.device), qpos, None, None, state.capture_layers)
        fed = torch.zeros(n, dtype=torch.bool)
        fed[list(seqs)] = True
        for b, toks in seqs.items():
            state.lengths[b] += len(toks)
        state.logits = torch.where(fed.to(state.logits.device)[:, None], logits[:, -1], state.logits)
        return {layer: x[:, -1] for layer, x in captured.items()}

    @staticmethod
    def rollback(state: DecodeState, b: int, length: int) -> None:
        """Row `b`'s slot keeps its first `length` positions (later ones are overwritten by the next feeds)."""
        state.lengths[b] = int(length)

    @staticmethod
    def set_steers(state: DecodeState, steers: Sequence[Steer | None]) -> None:
        """Each row's slot carries `steers[b]` (None: no steer); a step adds it where its `live` says."""
        for b, s in enumerate(steers):
            state.steer.set(b, s)

    # ---- decoding --------------------------------------------------------------------------------
    def choose(self, state: DecodeState, active: torch.Tensor, sampling: Sampling | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next token and its log-prob for every row `[batch]` (CPU); greedy when `sampling` is None.

        Softmax, top-p and the draw stay on the model's device: only `batch` ids come back.
        """
        logits = state.logits
        logp = torch.log_softmax(logits, dim=-1)
        if sampling is None:
            tokens = logits.argmax(-1)
        elif self.sampler == "counter":
            if any(r.seed is None for b, r in enumerate(state.rows) if active[b]):
                raise ValueError("sampling needs a seed per row")
            seeds = torch.tensor([r.seed or 0 for r in state.rows], dtype=torch.long)
            steps = torch.tensor([len(r.tokens) for r in state.rows], dtype=torch.long)
            tokens = sample(logits, sampling.temperature, sampling.top_p, seeds, steps)
        else:
            probs = torch.softmax(logits / sampling.temperature, dim=-1)
            if sampling.top_p < 1.0:
                sorted_p, order = probs.sort(dim=-1, descending=True)
                keep = sorted_p.cumsum(-1) - sorted_p < sampling.top_p  # always keeps the top token
                probs = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
            tokens = torch.zeros(len(state.rows), dtype=torch.long, device=logits.device)
            for b, row in enumerate(state.rows):
                if active[b]:
                    tokens[b] = torch.multinomial(probs[b], 1, generator=row.generator)[0]
        lp = logp.gather(-1, tokens[:, None])[:, 0]
        return tokens.cpu(), lp.cpu()
