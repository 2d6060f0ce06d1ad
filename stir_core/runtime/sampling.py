"""Seeded sampling for a whole batch in one draw on the device, reproducible per row (the `counter` sampler).

Each row owns a seed; its t-th sampled token is drawn from noise that depends only on (seed, t, token id),
hashed on the device (a SplitMix64-style mixer in int64 arithmetic), so a row's tokens do not depend on the
batch it decodes in, and the whole batch is a handful of kernels instead of one `torch.multinomial` per row
per step (each a kernel launch and a host sync: the cost that matters on a GPU at mining's batch sizes).

The draw is an exponential race over the top-p nucleus: with E_v = -log U_v i.i.d. Exp(1), the token
argmax_v p_v / E_v is distributed as p (restricted to the nucleus and renormalised): the same distribution
`torch.multinomial` samples, from a different random stream. So the `counter` and `generator` samplers give
different tokens for the same seed; each is reproducible on its own.
"""

from __future__ import annotations

import torch

_MASK53 = (1 << 53) - 1


def _wrap(c: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN, _M1, _M2 = _wrap(0x9E3779B97F4A7C15), _wrap(0xBF58476D1CE4E5B9), _wrap(0x94D049BB133111EB)
_STEP = _wrap(0xD1B54A32D192ED03)


def _shr(x: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's `>>` is arithmetic: it copies the sign bit)."""
    return (x >> n) & ((1 << (64 - n)) - 1)


def uniform(seeds: torch.Tensor, steps: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """U(0, 1] noise `[batch, k]` float64 for rows with `seeds` `[batch]` and `steps` `[batch]` (int64),
    one value per token id in `ids` `[batch, k]`: a pure function of (seed, step, id)."""
    row = _mix(seeds * _GOLDEN + steps * _STEP)  # int64 arithmetic wraps: the hash's modular arithmetic
    x = _mix(row[:, None] + ids * _GOLDEN)
    return ((_shr(x, 11) & _MASK53) + 1).double() * 2.0**-53


def _mix(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser: a bijection of 64-bit words that spreads every input bit."""
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


def sample(logits: torch.Tensor, temperature: float, top_p: float, seeds: torch.Tensor, steps: torch.Tensor
           ) -> torch.Tensor:
    """One token per row `[batch]` (long, on the logits' device) from `logits` `[batch, d_vocab]` at
    `temperature` within the `top_p` nucleus (the top token always kept), row b drawing with noise
    (seeds[b], steps[b])."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < top_p  # a prefix of each row: the nucleus
    k = int(keep.sum(-1).max())  # only the widest nucleus' columns need noise
    sorted_p, order, keep = sorted_p[:, :k], order[:, :k], keep[:, :k]
    noise = uniform(seeds.to(logits.device), steps.to(logits.device), order)
    race = torch.where(keep, sorted_p.double() / -torch.log(noise), -1.0)
    return order.gather(-1, race.argmax(-1, keepdim=True))[:, 0]
