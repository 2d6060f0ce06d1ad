"""A tiny random-weight Llama with a character tokenizer, saved as ordinary HF files (test helper)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

CHARS = list("0123456789+-=#*/ ,.:?abcdefghijklmnopqrstuvwxyzQA\n")


def build_tiny_model(out: Path, n_layers: int = 3, d_model: int = 48, seed: int = 0) -> Path:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    special = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {t: i for i, t in enumerate(special + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=d_model, intermediate_size=2 * d_model,
                      num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger logits so greedy decoding is far from ties
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(out, safe_serialization=True)
    (out / "README.md").write_text(json.dumps({"note": "random weights for tests"}))
    return out
