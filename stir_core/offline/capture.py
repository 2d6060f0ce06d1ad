"""Control-point states the reference's way: re-tokenize the text cut at each delimiter, one forward each.

The reference (`sznnzs/LLM-Latent-Action`, stir/offline/stage1.py:458–507) cuts every rollout's *text* at
the character offset where the m-th delimiter ends (`_delimiter_end_offsets`, stage1.py:43–56: left to right,
non-overlapping, like `str.count`), prepends the chat-formatted prompt *as text*, and takes the hidden state
of the last token of a fresh forward over that string (stage1.py:545–596: `max_tokens=1`, position −1). The
gold positive is cut the same way from the gold text (stage1.py:492–493), so prompt and gold are tokenized
together.

Our default (`MineConfig.capture = "decode"`, i.e. capture by tokens) keeps the sampled token ids and reads
the state at the token that completes the delimiter, during decoding. The two differ when

- the completing token carries more text than the delimiter ("\\n\\nThe", ".\\n\\n" is fine: the delimiter
  ends it): the cut text ends inside that token, so the re-tokenized text ends with a different token;
- the sampled tokenization is not the canonical one the tokenizer gives the same text (a model may emit
  "\\n" "\\n" where the tokenizer would write "\\n\\n"), or the prompt/completion seam merges differently.

`retokenized_states` is that computation; mining calls it when `capture = "retokenize"`, and
`benchmarks/bench_capture.py` measures how often and how much it differs from the decode capture.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def delimiter_end_offsets(text: str, delimiter: str) -> list[int]:
    """Character offsets just past each occurrence of `delimiter` in `text`, left to right, non-overlapping
    (`str.count` semantics; the reference's `_delimiter_end_offsets`).

    >>> delimiter_end_offsets("a\\n\\nb\\n\\n\\n\\nc", "\\n\\n")
    [3, 6, 8]
    """
    if not delimiter:
        raise ValueError("delimiter_end_offsets: the delimiter is empty")
    out, start = [], 0
    while (i := text.find(delimiter, start)) >= 0:
        start = i + len(delimiter)
        out.append(start)
    return out


def retokenized_ids(model: Any, prompt_text: str, completion: str, delimiter: str,
                    max_points: int | None = None) -> list[list[int]]:
    """Token ids of `prompt_text + completion[:end_m]` for each control point m (the prompt already in its
    chat format), each string tokenized whole as the reference's `llm.generate(text)` does."""
    ends = delimiter_end_offsets(completion, delimiter)
    if max_points is not None:
        ends = ends[:max_points]
    return [model.encode(prompt_text + completion[:end]) for end in ends]


def retokenized_states(engine: Any, prompt_text: str, completion: str, delimiter: str, layers: Sequence[int],
                       max_points: int | None = None, batch: int = 16) -> torch.Tensor:
    """States [n_control_points, n_layers, d_model] (float32, CPU) at the last token of each re-tokenized
    prefix; row m-1 is control point m. `engine.forward_states` runs `batch` prefixes per forward."""
    seqs = retokenized_ids(engine.model, prompt_text, completion, delimiter, max_points)
    if not seqs:
        return torch.zeros(0, len(layers), engine.model.d_model)
    out = []
    for lo in range(0, len(seqs), batch):
        out += [s[-1] for s in engine.forward_states(seqs[lo:lo + batch], list(layers))]
    return torch.stack(out)
