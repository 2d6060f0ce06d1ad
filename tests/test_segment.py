"""The incremental detokenizer and segmenter against `tokenizer.decode` and `str.count`, on real tokenizer
kinds trained here: byte-level BPE (split characters) and SentencePiece/Metaspace (leading spaces)."""

from __future__ import annotations

import random

import pytest

from stir_core.runtime.segment import Segmenter, TextStream, segment_ends

CORPUS = ["Step one.\n\nThe answer is 4.\n\n\n\nDone é ü 日本語 ok\n\n" * 3,
          "Ünïcödé wörds ☃ and more.\n\nThe end.\n\n"] * 50


def byte_level():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def metaspace():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok)


@pytest.mark.parametrize("make", [byte_level, metaspace], ids=["byte-level-bpe", "metaspace"])
def test_stream_text_and_control_points_equal_decode_and_count(make):
    tok = make()
    rng = random.Random(0)
    text_ids = tok("".join(CORPUS[:2]))["input_ids"]
    fused = 0
    for trial in range(300):
        if trial % 2:  # arbitrary id sequences: split characters, stray bytes
            ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 40))]
        else:
            ids = text_ids[: rng.randrange(1, len(text_ids))]
        stream = TextStream.new(tok, "\n\n")
        for i in ids:
            stream.push(i)
        stream.finish()
        ref = tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert stream.text == ref
        assert stream.control_points == ref.count("\n\n") == sum(stream.boundaries)
        assert len(segment_ends(tok, ids, "\n\n")) == ref.count("\n\n")
        fused += sum(n > 1 for n in stream.boundaries)
    assert fused > 0, "no token held two delimiters: the fused case went untested"


def test_segmenter_counts_like_str_count_across_pieces():
    rng = random.Random(1)
    for _ in range(500):
        text = "".join(rng.choice(["\n", "\n\n", "a", ".", "\n\n\n"]) for _ in range(rng.randrange(1, 30)))
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randrange(0, 8)))) if len(text) > 1 else []
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        seg = Segmenter("\n\n")
        assert sum(seg.push(p) for p in pieces) == text.count("\n\n")
