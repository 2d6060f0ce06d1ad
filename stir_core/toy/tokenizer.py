"""A character-level tokenizer in standard Hugging Face files.

One token per printable ASCII character plus newline, and four specials. `tokenizer(text)` prepends
`<bos>` (like Llama tokenizers); `<eos>` ends every training completion; `<pad>` is never attended to.
Saved as `tokenizer.json` + `tokenizer_config.json`, loadable with `AutoTokenizer.from_pretrained`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
CHARS = ("\n", *(chr(c) for c in range(32, 127)))
VOCAB: dict[str, int] = {tok: i for i, tok in enumerate((*SPECIALS, *CHARS))}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The character tokenizer (vocab size `len(VOCAB)`, ids fixed by `VOCAB`)."""
    # BPE with no merges splits the (un-pre-tokenized) text into single characters.
    tok = Tokenizer(models.BPE(vocab=dict(VOCAB), merges=[], unk_token=UNK))
    tok.add_special_tokens(list(SPECIALS))
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, VOCAB[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
    )


def encode(text: str) -> list[int]:
    """Token ids of `text` without BOS (one id per character); raises ValueError on unknown characters."""
    bad = sorted({c for c in text if c not in VOCAB})
    if bad:
        raise ValueError(f"characters outside the toy vocabulary: {bad!r}")
    return [VOCAB[c] for c in text]


def save_tokenizer(out_dir: str | Path) -> None:
    """Write `tokenizer.json` and `tokenizer_config.json` into `out_dir` (each atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": UNK,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 256,
        "padding_side": "left",
    }
    _atomic_write(out / "tokenizer.json", tok.backend_tokenizer.to_str(pretty=True))
    _atomic_write(out / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
