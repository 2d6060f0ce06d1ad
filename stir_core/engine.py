"""One decoding engine for every stage: mining rollouts, previews, commits and baselines.

Batched incremental decoding over a `TransformerBridge` with Hugging Face's KV cache. Rows are left-padded
and may have holes: every forward feeds one token per row (a pad with mask 0 for idle rows), and position
ids come from the cumulative attention mask, so rows advance independently inside one physical cache.

Vocabulary (per row b):
- a **steer** adds `scale * vector` to `blocks.{layer}.hook_resid_post`, at the last prefix token (`last`:
  the delimiter is re-run with the vector, its old cache slot masked out), at every token generated in the
  segment (`segment`), or both;
- a **capture** records resid_post at chosen layers whenever a generated token completes `capture_at`
  (the segment delimiter): the control-point states, taken from the decode itself, no extra forward;
- a **fork** copies rows (repeats allowed) into an independent state, to preview continuations.

Hooks are attached for one forward at a time through `bridge.hooks(...)`, so none stay attached.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from stir_core.backend import Backend, hook_name
from stir_core.model import LoadedModel

POSITIONS = ("last", "segment", "last+segment")


@dataclass
class Steer:
    """Add `scale * vector` at `blocks.{layer}.hook_resid_post` of one row. `tag` names it in traces."""

    layer: int
    vector: torch.Tensor  # [d_model]
    scale: float = 1.0
    positions: str = "last"
    tag: str = ""

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"unknown steer positions {self.positions!r}; use one of {POSITIONS}")

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


@dataclass
class Row:
    """Everything one row has generated. `added[i]` is (tag, norm) of what was added at generated token i."""

    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    added: list[tuple[str, float] | None] = field(default_factory=list)
    captures: list[Capture] = field(default_factory=list)
    finished: bool = False  # EOS seen: the row never continues
    generator: torch.Generator | None = None

    @property
    def prompt_len(self) -> int:
        return len(self.prompt)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def clone(self) -> Row:
        gen = None
        if self.generator is not None:
            gen = torch.Generator(device=self.generator.device)
            gen.set_state(self.generator.get_state())
        return Row(self.prompt, list(self.tokens), list(self.pieces), list(self.logprobs), list(self.added),
                   list(self.captures), self.finished, gen)


@dataclass
class DecodeState:
    """A batch in flight: KV cache, attention mask over physical slots, next-token logits, rows."""

    cache: object  # transformers DynamicCache
    mask: torch.Tensor  # [batch, slots] long
    logits: torch.Tensor  # [batch, d_vocab] float32: next-token logits of each row
    rows: list[Row]
    capture_layers: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class GenerateResult:
    texts: list[str]
    tokens: list[list[int]]
    logprobs: list[list[float]]
    captures: list[list[Capture]]
    rows: list[Row]


@dataclass
class ControlPoint:
    """A row that just completed its m-th segment. `states[layer]` is resid_post at the delimiter [d_model]."""

    row: int
    m: int
    token_index: int
    text: str
    states: dict[int, torch.Tensor]


class Policy:
    """Decides, for a batch of control points, what to commit (a Steer) or nothing (None).

    Subclasses override `decide`; a policy may use the engine (e.g. fork the state to preview candidates),
    but must leave `state` itself unchanged. `capture_layers` are the layers whose states it reads.
    """

    capture_layers: tuple[int, ...] = ()

    def decide(self, engine: Engine, state: DecodeState, points: list[ControlPoint]) -> list[Steer | None]:
        raise NotImplementedError


class FunctionPolicy(Policy):
    """Wraps `fn(row, m, text, states) -> Steer | None` (one decision per row, no previews)."""

    def __init__(self, fn: Callable[[int, int, str, dict[int, torch.Tensor]], Steer | None],
                 capture_layers: Sequence[int]):
        self.fn, self.capture_layers = fn, tuple(capture_layers)

    def decide(self, engine, state, points):
        return [self.fn(p.row, p.m, p.text, p.states) for p in points]


class Engine:
    """Batched KV-cached decoding with per-row stops, budgets, sampling, steering, capture and forks."""

    def __init__(self, model: LoadedModel):
        self.model = model
        self.bridge = model.bridge
        self.backend = Backend(model.bridge)
        self.device = model.device
        self._piece_cache: dict[int, str] = {}

    # ---- low level -------------------------------------------------------------------------------
    def piece(self, token: int) -> str:
        """Text of one token (cached); special tokens decode to ''."""
        if token not in self._piece_cache:
            self._piece_cache[token] = self.model.tokenizer.decode([token], skip_special_tokens=True)
        return self._piece_cache[token]

    @torch.no_grad()
    def _forward(self, state: DecodeState | None, input_ids: torch.Tensor, new_mask: torch.Tensor,
                 adds: dict[int, torch.Tensor] | None, capture_layers: Sequence[int], keep: str = "last"):
        """Feed `input_ids` [batch, t] after the cached slots.

        `adds[layer]` is [batch, t, d_model] (or [batch, 1, d_model] for t == 1) added to resid_post.
        Returns (logits [batch, 1, vocab] float32 — the last position's, or None for keep="none" —, cache,
        mask, {layer: resid_post [batch, t, d_model]}).
        """
        mask = new_mask if state is None else torch.cat([state.mask, new_mask], dim=1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        captured: dict[int, torch.Tensor] = {}
        hooks: list[tuple[str, Callable]] = []
        for layer in sorted(set(capture_layers) | set(adds or {})):
            add = None if adds is None else adds.get(layer)

            def fn(x, hook, add=add, layer=layer):
                if add is not None:
                    x = x + add.to(x.device, x.dtype)  # under a device_map, the layer's own device
                if layer in capture_layers:
                    captured[layer] = x.detach().float()
                return x

            hooks.append((hook_name(layer), fn))
        cache = self.backend.new_cache() if state is None else state.cache
        logits = self.backend.forward(input_ids, mask, pos, cache, hooks, keep=keep)
        return (None if logits is None else logits.float()), cache, mask, captured

    def prefill(self, prompts: Sequence[Sequence[int]], capture_layers: Sequence[int] = (),
                seeds: Sequence[int] | None = None) -> DecodeState:
        """Left-pad and run the prompts (token ids) in one forward; returns the state ready to decode."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("prefill needs at least one non-empty prompt")
        width = max(len(p) for p in prompts)
        pad = self.model.pad_token_id
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[b, width - len(p):] = 1
        logits, cache, mask, _ = self._forward(None, ids.to(self.device), mask.to(self.device), None, ())
        rows = []
        for b, p in enumerate(prompts):
            gen = None
            if seeds is not None:
                gen = torch.Generator().manual_seed(int(seeds[b]))
            rows.append(Row(prompt=list(p), generator=gen))
        return DecodeState(cache, mask, logits[:, -1], rows, tuple(capture_layers))

    @torch.no_grad()
    def forward_states(self, sequences: Sequence[Sequence[int]], layers: Sequence[int]) -> list[torch.Tensor]:
        """Teacher-forced states: one left-padded forward over token sequences.

        Returns per sequence a tensor [len(seq), len(layers), d_model] of resid_post (float32, CPU).
        """
        width = max(len(x) for x in sequences)
        ids = torch.full((len(sequences), width), self.model.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for b, x in enumerate(sequences):
            ids[b, width - len(x):] = torch.tensor(list(x), dtype=torch.long)
            mask[b, width - len(x):] = 1
        _, _, _, cap = self._forward(None, ids.to(self.device), mask.to(self.device), None, tuple(layers),
                                     keep="none")
        stacked = torch.stack([cap[layer].cpu() for layer in layers], dim=2)  # [batch, width, layers, d]
        return [stacked[b, width - len(x):] for b, x in enumerate(sequences)]

    def fork(self, state: DecodeState, rows: Sequence[int]) -> DecodeState:
        """An independent state with the given rows (repeats allowed), e.g. one prefix into L+1 previews."""
        idx = torch.tensor(list(rows), dtype=torch.long, device=state.mask.device)
        return DecodeState(self.backend.select_rows(state.cache, idx), state.mask.index_select(0, idx),
                           state.logits.index_select(0, idx), [state.rows[i].clone() for i in rows],
                           state.capture_layers)

    def _step(self, state: DecodeState, tokens: torch.Tensor, feed: torch.Tensor,
              adds: dict[int, torch.Tensor] | None) -> dict[int, torch.Tensor]:
        """Feed one token per row (`feed[b]` False: a masked pad) and update cache, mask and logits."""
        ids = torch.where(feed, tokens, torch.full_like(tokens, self.model.pad_token_id))
        logits, cache, mask, captured = self._forward(
            state, ids[:, None].to(self.device), feed.long()[:, None].to(self.device), adds, state.capture_layers
        )
        state.cache, state.mask = cache, mask
        keep = feed.to(state.logits.device)[:, None]
        state.logits = torch.where(keep, logits[:, -1], state.logits)
        return captured

    def _adds(self, steers: Sequence[Steer | None], use: Callable[[Steer], bool],
              feed: torch.Tensor) -> dict[int, torch.Tensor] | None:
        """Per-layer add tables [batch, 1, d_model] for rows whose steer applies at this step."""
        tables: dict[int, torch.Tensor] = {}
        for b, s in enumerate(steers):
            if s is None or not use(s) or not bool(feed[b]):
                continue
            if s.layer not in tables:
                tables[s.layer] = torch.zeros(len(steers), 1, self.model.d_model, device=self.device)
            tables[s.layer][b, 0] += s.scale * s.vector.to(self.device, torch.float32)
        return tables or None

    def refeed_last(self, state: DecodeState, steers: Sequence[Steer | None]) -> None:
        """Re-run the last token of every row whose steer acts at `last`, with the vector added there.

        The row's old slot for that token is masked out, so the re-run token keeps its position id and
        the impulse reaches every later token through the KV cache.
        """
        feed = torch.tensor([s is not None and s.at_last for s in steers])
        if not bool(feed.any()):
            return
        last_slot = torch.zeros(len(state.rows), dtype=torch.long)
        tokens = torch.zeros(len(state.rows), dtype=torch.long)
        for b, row in enumerate(state.rows):
            if feed[b]:
                # The last attended slot of row b holds its last token.
                slots = torch.nonzero(state.mask[b]).flatten()
                last_slot[b] = slots[-1]
                tokens[b] = row.tokens[-1] if row.tokens else row.prompt[-1]
        state.mask = state.mask.clone()
        rows_idx = torch.nonzero(feed).flatten()
        state.mask[rows_idx.to(state.mask.device), last_slot[rows_idx].to(state.mask.device)] = 0
        self._step(state, tokens, feed, self._adds(steers, lambda s: s.at_last, feed))
        for b, s in enumerate(steers):
            if feed[b] and state.rows[b].added:
                state.rows[b].added[-1] = (s.tag, s.added_norm)

    # ---- decoding --------------------------------------------------------------------------------
    def _choose(self, state: DecodeState, active: torch.Tensor, sampling: Sampling | None) -> torch.Tensor:
        logits = state.logits
        if sampling is None:
            return logits.argmax(-1).cpu()
        probs = torch.softmax(logits / sampling.temperature, dim=-1).cpu()
        if sampling.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < sampling.top_p  # always keeps the top token
            sorted_p = sorted_p * keep
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        out = torch.zeros(len(state.rows), dtype=torch.long)
        for b, row in enumerate(state.rows):
            if active[b]:
                out[b] = torch.multinomial(probs[b], 1, generator=row.generator).item()
        return out

    def decode(self, state: DecodeState, max_new_tokens: int | Sequence[int], stop: str | None = None,
               sampling: Sampling | None = None, steers: Sequence[Steer | None] | None = None,
               capture_at: str | None = None, active: Sequence[bool] | None = None,
               on_step: Callable[[int], None] | None = None) -> list[int]:
        """Decode every active row until it emits EOS, completes `stop` or spends its budget.

        Each sampled token is fed (so its state is captured and the next logits are ready); `steers[b]`
        acts at every generated token when its positions include `segment`. Returns new tokens per row.
        """
        n = len(state.rows)
        budgets = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
        if len(budgets) != n:
            raise ValueError(f"max_new_tokens has {len(budgets)} entries for {n} rows")
        steers = list(steers) if steers is not None else [None] * n
        live = torch.tensor([(True if active is None else bool(active[b])) and not r.finished and budgets[b] > 0
                             for b, r in enumerate(state.rows)])
        if sampling is not None and any(r.generator is None for b, r in enumerate(state.rows) if live[b]):
            raise ValueError("sampling needs seeded rows: pass seeds= to prefill")
        made = [0] * n
        eos = self.model.eos_token_id
        log_norm = torch.log_softmax
        while bool(live.any()):
            tokens = self._choose(state, live, sampling)
            lp = log_norm(state.logits, dim=-1).gather(-1, tokens[:, None].to(state.logits.device))[:, 0].cpu()
            adds = self._adds(steers, lambda s: s.at_segment, live)
            captured = self._step(state, tokens, live, adds)
            for b in torch.nonzero(live).flatten().tolist():
                row, tok = state.rows[b], int(tokens[b])
                s = steers[b]
                before = row.text if (stop or capture_at) else ""
                row.tokens.append(tok)
                row.pieces.append(self.piece(tok))
                row.logprobs.append(float(lp[b]))
                row.added.append((s.tag, s.added_norm) if s is not None and s.at_segment else None)
                made[b] += 1
                text = before + row.pieces[-1]
                if capture_at and captured and text.count(capture_at) > before.count(capture_at):
                    states = torch.stack([captured[layer][b, -1].cpu() for layer in state.capture_layers])
                    row.captures.append(Capture(len(row.tokens) - 1, states))
                if eos is not None and tok == eos:
                    row.finished = True
                if row.finished or made[b] >= budgets[b] or (stop and text.count(stop) > before.count(stop)):
                    live[b] = False
            if on_step is not None:
                on_step(int(live.sum()))
        return made

    def generate(self, prompts: Sequence[str], max_new_tokens: int | Sequence[int], stop: str | None = None,
                 sampling: Sampling | None = None, seed: int = 0, seeds: Sequence[int] | None = None,
                 capture_layers: Sequence[int] = (), capture_at: str | None = "\n\n",
                 steers: Sequence[Steer | None] | None = None) -> GenerateResult:
        """Prompts (text, already formatted) in, completions out; greedy when `sampling` is None."""
        if not prompts:
            raise ValueError("generate needs at least one prompt")
        for i, p in enumerate(prompts):
            if not p or not p.strip():
                raise ValueError(f"prompt {i} is empty")
        ids = [self.model.encode(p) for p in prompts]
        if sampling is not None and seeds is None:
            seeds = [seed * 1_000_003 + b for b in range(len(prompts))]
        state = self.prefill(ids, capture_layers, seeds)
        self.decode(state, max_new_tokens, stop=stop, sampling=sampling, steers=steers,
                    capture_at=capture_at if capture_layers else None)
        return GenerateResult([r.text for r in state.rows], [r.tokens for r in state.rows],
                              [r.logprobs for r in state.rows], [r.captures for r in state.rows], state.rows)

    def generate_segmented(self, prompts: Sequence[str], policy: Policy | Callable | None,
                           max_new_tokens: int, delimiter: str = "\n\n", max_control_points: int | None = None,
                           capture_layers: Sequence[int] | None = None):
        """Greedy segmented decoding of text prompts with `policy` deciding at every control point.

        Returns (GenerateResult, decisions) where decisions[b] lists (ControlPoint, Steer | None) of row b.
        """
        if policy is not None and not isinstance(policy, Policy):
            layers = capture_layers if capture_layers is not None else range(self.model.n_layers)
            policy = FunctionPolicy(policy, layers)
        layers = tuple(capture_layers if capture_layers is not None else (policy.capture_layers if policy else ()))
        for i, p in enumerate(prompts):
            if not p or not p.strip():
                raise ValueError(f"prompt {i} is empty")
        state = self.prefill([self.model.encode(p) for p in prompts], layers)
        decisions = _segmented(self, state, policy, max_new_tokens, delimiter, max_control_points)
        rows = state.rows
        res = GenerateResult([r.text for r in rows], [r.tokens for r in rows], [r.logprobs for r in rows],
                             [r.captures for r in rows], rows)
        return res, decisions


def _segmented(engine: Engine, state: DecodeState, policy: Policy | None, max_new_tokens: int,
               delimiter: str, max_control_points: int | None) -> list[list[tuple[ControlPoint, Steer | None]]]:
    """Decode segment by segment, asking `policy` at each control point; then finish unsteered."""
    n = len(state.rows)
    left = lambda: [max(0, max_new_tokens - len(r.tokens)) for r in state.rows]  # noqa: E731
    cap = delimiter if state.capture_layers else None
    engine.decode(state, left(), stop=delimiter, capture_at=cap)
    decisions: list[list[tuple[ControlPoint, Steer | None]]] = [[] for _ in range(n)]
    m = 0
    while max_control_points is None or m < max_control_points:
        m += 1
        points = []
        for b, row in enumerate(state.rows):
            at_cp = row.text.endswith(delimiter) and not row.finished and len(row.tokens) < max_new_tokens
            if at_cp and row.text.count(delimiter) == m:
                states = {}
                if row.captures and row.captures[-1].token_index == len(row.tokens) - 1:
                    states = dict(zip(state.capture_layers, row.captures[-1].states, strict=True))
                points.append(ControlPoint(b, m, len(row.tokens) - 1, row.text, states))
        if not points:
            break
        steers: list[Steer | None] = [None] * n
        chosen = policy.decide(engine, state, points) if policy is not None else [None] * len(points)
        for p, s in zip(points, chosen, strict=True):
            steers[p.row] = s
            decisions[p.row].append((p, s))
        engine.refeed_last(state, steers)
        active = [False] * n
        for p in points:
            active[p.row] = True
        engine.decode(state, left(), stop=delimiter, steers=steers, capture_at=cap, active=active)
    engine.decode(state, left(), stop=None, capture_at=cap)
    return decisions
