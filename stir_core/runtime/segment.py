"""Text and control points of a token stream: one incremental detokenizer and one segmenter, O(1) per token.

**Text.** Decoding one token at a time garbles byte-level BPE (a character split over two tokens) and drops
SentencePiece's leading spaces (`▁The` alone decodes to `The`). `Detokenizer` keeps a short window of ids
and emits the text that a token adds to `tokenizer.decode(ids)`, withholding it while the window ends in
an incomplete character (`\\ufffd`); `flush()` releases the rest at the end. So the concatenated pieces
equal `tokenizer.decode(ids, skip_special_tokens=True)`.

**Control points.** A control point is the end of one occurrence of the delimiter in the generated text,
counted as `str.count` counts (left to right, non-overlapping). It belongs to the token whose piece
completes that occurrence; its state is that token's residual stream. Real tokenizers fuse the delimiter
with neighbours, so:
- a token like `".\\n\\n"` or `"\\n\\nThe"` completes one occurrence: one control point at that token
  (for `"\\n\\nThe"` the segment's text then already holds `The` — the model saw it in the same position);
- a token like `"\\n\\n\\n\\n"` completes two: two control points at the same token. Policies act once, at
  the last of them (the earlier ones have no later state to steer from); the trace keeps every one.
- an occurrence split across tokens (`"\\n"` + `"\\n"`) ends at the token that completes it.
So the number of control points always equals `text.count(delimiter)`, and steering never silently stops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

_DECODE_CACHE_LIMIT = 200_000


class Detokenizer:
    """Incremental `tokenizer.decode` for one stream of ids (the generated tokens of one row).

    Decodes of short id windows are memoised in `cache` (shared between rows of one engine), so a step costs
    a dict lookup in the common case.
    """

    __slots__ = ("tok", "cache", "ids", "prefix", "read")

    def __init__(self, tokenizer: Any, cache: dict | None = None):
        self.tok = tokenizer
        self.cache = cache if cache is not None else {}
        self.ids: list[int] = []
        self.prefix = 0  # window start: ids before it are final text
        self.read = 0  # ids before it have been emitted

    def _decode(self, ids: Sequence[int]) -> str:
        key = tuple(ids)
        text = self.cache.get(key)
        if text is None:
            if len(self.cache) > _DECODE_CACHE_LIMIT:
                self.cache.clear()
            # No clean-up of spaces: decoded pieces must concatenate to the decode of the whole.
            text = self.tok.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
            self.cache[key] = text
        return text

    def push(self, token: int) -> str:
        """Append one id; return the text it adds (maybe '' while a character is incomplete)."""
        self.ids.append(int(token))
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        """Text still withheld at the end of the stream (an incomplete character decodes as itself)."""
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return now[len(before):] if len(now) > len(before) else ""

    def copy(self) -> Detokenizer:
        new = Detokenizer(self.tok, self.cache)
        new.ids, new.prefix, new.read = list(self.ids), self.prefix, self.read
        return new


@dataclass
class Segmenter:
    """Counts delimiter occurrences in a growing text, looking only at the new piece and a short tail.

    `push(piece)` returns how many occurrences the piece completes (usually 0 or 1).
    """

    delimiter: str
    count: int = 0
    _tail: str = ""  # text after the last match end, at most len(delimiter) - 1 characters kept
    _chars: int = 0

    def __post_init__(self) -> None:
        if not self.delimiter:
            raise ValueError("the delimiter must be a non-empty string")

    def push(self, piece: str) -> int:
        if not piece:
            return 0
        self._chars += len(piece)
        buf = self._tail + piece
        found, start = 0, 0
        while (j := buf.find(self.delimiter, start)) >= 0:
            found += 1
            start = j + len(self.delimiter)
        rest = buf[start:]
        keep = len(self.delimiter) - 1
        self._tail = rest[-keep:] if keep else ""
        self.count += found
        return found

    def copy(self) -> Segmenter:
        return Segmenter(self.delimiter, self.count, self._tail, self._chars)


@dataclass(kw_only=True)
class TextStream:
    """A row's generated text: pieces per token and control points, kept in step with its tokens.

    `pieces[i]` is the text token i added (`"".join(pieces) == tokenizer.decode(tokens)` after `finish()`);
    `boundaries[i]` is how many delimiter occurrences token i completed.
    """

    detok: Detokenizer
    segmenter: Segmenter
    pieces: list[str] = field(default_factory=list)
    boundaries: list[int] = field(default_factory=list)
    text_len: int = 0

    @classmethod
    def new(cls, tokenizer: Any, delimiter: str, cache: dict | None = None) -> TextStream:
        return cls(detok=Detokenizer(tokenizer, cache), segmenter=Segmenter(delimiter))

    def push(self, token: int) -> int:
        """Add one token; returns the number of delimiter occurrences it completed."""
        piece = self.detok.push(token)
        n = self.segmenter.push(piece)
        self.pieces.append(piece)
        self.boundaries.append(n)
        self.text_len += len(piece)
        return n

    def finish(self) -> None:
        """Release withheld text into the last token's piece (the stream's end)."""
        rest = self.detok.flush()
        if rest and self.pieces:
            self.pieces[-1] += rest
            self.boundaries[-1] += self.segmenter.push(rest)
            self.text_len += len(rest)

    @property
    def control_points(self) -> int:
        return self.segmenter.count

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def copy(self) -> TextStream:
        return TextStream(detok=self.detok.copy(), segmenter=self.segmenter.copy(), pieces=list(self.pieces),
                          boundaries=list(self.boundaries), text_len=self.text_len)


def segment_ends(tokenizer: Any, ids: Sequence[int], delimiter: str) -> list[int]:
    """Token index of every control point of a finished id sequence (repeated for fused delimiters).

    The offline twin of `TextStream`, for teacher-forced sequences (gold solutions, stored rollouts).
    """
    stream = TextStream.new(tokenizer, delimiter)
    for t in ids:
        stream.push(t)
    stream.finish()
    return [i for i, n in enumerate(stream.boundaries) for _ in range(n)]
