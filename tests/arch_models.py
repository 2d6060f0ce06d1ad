"""Tiny random-init models of real Hugging Face classes, with realistic tokenizers trained here (test helper).

Two tokenizers, trained once per session on a synthetic corpus made below (no downloads):

- `bpe`: byte-level BPE laid out like Qwen2 / Llama 3 (a regex split, then the GPT-2 byte alphabet; no BOS;
  ChatML template). Its regex is Qwen2's with one extra alternative that lets newlines fuse with a following
  word, so the merges fuse "\\n\\n" with punctuation (".\\n\\n"), with itself ("\\n\\n\\n\\n") and with a word
  ("\\n\\nThe") — the fusions that break counting delimiters token by token. Rare characters stay split across
  byte tokens, so a character can span tokens.
- `sp`: SentencePiece-style BPE laid out like Llama 2 / Mistral / Gemma (Metaspace "▁" for spaces, byte
  fallback `<0x..>` tokens, `<s>` BOS; `[INST]` template). Newlines are ordinary pieces, so "\\n\\n" fuses with
  neighbours here too.

`build_family(family, out)` writes `config.json`, weights and the tokenizer to `out`, ready for
`stir_core.runtime.model.load_model(out)` — the path users take. Weights are random, then trained for a few Adam steps
to recite `SCRIPT` (random weights rarely emit a delimiter, let alone a fused one): greedy text then holds
every fusion, from any prompt, deterministically.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

DELIM = "\n\n"

# Qwen2's pre-tokenizer regex, plus `[\r\n]+\p{L}+` first so "\n\nThe" can be one pre-token (SentencePiece
# vocabularies, which do not split on newlines, have such tokens).
BPE_REGEX = (r"[\r\n]+\p{L}+|(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
INST = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
        "{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")

# Pieces the trained vocabularies must hold as single tokens (checked in `train_tokenizers`).
FUSED = (".\n\n", "\n\n\n\n", "\n\nThe")


WORDS = ["we", "add", "the", "sum", "so", "then", "next", "total", "is", "of", "and", "apples", "cost", "each",
         "half", "more", "less", "answer", "step", "check", "value", "price", "eggs", "days"]
RARE = ["é", "—", "→", "½", "€", "ü", "🙂"]  # multi-byte UTF-8: split across byte tokens when rare

# What the models are trained to say: every fusion above, plus "∑", which the tokenizer corpus never holds, so
# both tokenizers spell it with three byte tokens (a character split across tokens).
SCRIPT = ("We add 3 + 4 = 7.\n\nThe sum ∑ is 7\n\n\n\nSo the total is 9:\n\nThen 2 more é apples cost 5\n\n"
          "The answer is 9?\n\n")


def make_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Synthetic worked solutions: sentences, numbers, blank-line steps, runs of blank lines, rare characters."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        steps = []
        for _ in range(rng.randint(2, 5)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 7))]
            if rng.random() < 0.2:
                words.insert(rng.randrange(len(words)), rng.choice(RARE))
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            lead = rng.choice(["The", "The", "The", "So", "Then", "We"])
            steps.append(f"{lead} {' '.join(words)} {a} + {b} = {a + b}{rng.choice(['.', '.', ':', '', '', '?'])}")
        text = ""
        for s in steps:
            text += s + rng.choice([DELIM, DELIM, DELIM, "\n\n\n\n", "\n\n\n\n", "\n", "\n\n\n", " "])
        docs.append(text + f"#### {rng.randint(1, 200)}")
    return docs


@dataclass(frozen=True)
class Family:
    """One architecture: its transformers classes, config overrides and tokenizer kind."""

    name: str
    config_cls: str
    model_cls: str
    tokenizer: str  # "bpe" | "sp"
    overrides: dict[str, Any] = field(default_factory=dict)
    sliding_window: int | None = None  # set tiny so tests run past it
    lr: float = 1e-2  # of the short training run
    trained: bool = True  # False: random weights only (decoding and steering parity, no text checks)

    def make_config(self, vocab_size: int, special: dict[str, int]):
        import transformers

        cls = getattr(transformers, self.config_cls)
        common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=False, **special)
        if self.sliding_window is not None:
            common["sliding_window"] = self.sliding_window
        common.update(self.overrides)  # after the defaults: a family may re-tie its embeddings
        return cls(**common)


GPT2_KEYS = dict(n_embd=64, n_layer=2, n_head=4, n_positions=1024, n_inner=128)

FAMILIES = [
    Family("qwen2", "Qwen2Config", "Qwen2ForCausalLM", "bpe"),  # untied, as Qwen2.5-7B and R1-Distill-Qwen
    Family("qwen3", "Qwen3Config", "Qwen3ForCausalLM", "bpe", {"head_dim": 16}),
    Family("llama3", "LlamaConfig", "LlamaForCausalLM", "bpe"),
    Family("llama2", "LlamaConfig", "LlamaForCausalLM", "sp"),
    Family("mistral", "MistralConfig", "MistralForCausalLM", "sp", sliding_window=12),
    Family("gemma2", "Gemma2Config", "Gemma2ForCausalLM", "sp", {"head_dim": 16, "query_pre_attn_scalar": 16,
                                                                 "tie_word_embeddings": True}, sliding_window=12),
    Family("gemma3", "Gemma3TextConfig", "Gemma3ForCausalLM", "sp",
           {"head_dim": 16, "query_pre_attn_scalar": 16, "layer_types": ["sliding_attention", "full_attention"],
            "tie_word_embeddings": True},
           sliding_window=12),
    Family("gpt2", "GPT2Config", "GPT2LMHeadModel", "bpe", GPT2_KEYS),
    Family("phi3", "Phi3Config", "Phi3ForCausalLM", "sp"),
    Family("olmo2", "Olmo2Config", "Olmo2ForCausalLM", "bpe"),
]
# More families reasoning users run (MoE, sliding-window and MLA ones among them), random weights only: their
# checks are decoding, batching, forks and steering against full forwards.
MOE = dict(head_dim=16, moe_intermediate_size=32, num_experts_per_tok=2)
EXTENDED = [
    Family("qwen3_moe", "Qwen3MoeConfig", "Qwen3MoeForCausalLM", "bpe", {**MOE, "num_experts": 4}, trained=False),
    Family("gpt_oss", "GptOssConfig", "GptOssForCausalLM", "bpe",
           {"head_dim": 16, "num_local_experts": 4, "num_experts_per_tok": 2}, sliding_window=12, trained=False),
    Family("deepseek_v3", "DeepseekV3Config", "DeepseekV3ForCausalLM", "bpe",
           {"moe_intermediate_size": 32, "num_experts_per_tok": 2, "q_lora_rank": 32, "kv_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8,
            "v_head_dim": 16, "n_routed_experts": 4, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1},
           trained=False),
    Family("glm4_moe", "Glm4MoeConfig", "Glm4MoeForCausalLM", "bpe",
           {**MOE, "n_routed_experts": 4, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1}, trained=False),
    Family("mixtral", "MixtralConfig", "MixtralForCausalLM", "sp", {"num_local_experts": 4, "num_experts_per_tok": 2},
           trained=False),
    Family("smollm3", "SmolLM3Config", "SmolLM3ForCausalLM", "bpe", trained=False),
    Family("olmo3", "Olmo3Config", "Olmo3ForCausalLM", "bpe", sliding_window=12, trained=False),
    Family("exaone4", "Exaone4Config", "Exaone4ForCausalLM", "bpe", sliding_window=12, trained=False),
    Family("granite", "GraniteConfig", "GraniteForCausalLM", "bpe", trained=False),
    Family("seed_oss", "SeedOssConfig", "SeedOssForCausalLM", "bpe", {"head_dim": 16}, trained=False),
]
BY_NAME = {f.name: f for f in FAMILIES + EXTENDED}


# ---- tokenizers ------------------------------------------------------------------------------------
def _bpe_tokenizer(corpus: list[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(BPE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def _sp_tokenizer(corpus: list[str], vocab_size: int):
    """Llama-2 layout: <unk> <s> </s>, the 256 byte-fallback tokens, then the trained pieces."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    norm = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    probe = Tokenizer(models.BPE(unk_token="<unk>"))
    probe.normalizer = norm
    # SentencePiece never merges across a word start: split before every "▁" (newlines are not "▁").
    split = pre_tokenizers.Split("▁", behavior="merged_with_next")
    probe.pre_tokenizer = split
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 259, min_frequency=2, show_progress=False,
                                  special_tokens=["<unk>"])
    probe.train_from_iterator(corpus, trainer)
    learned = probe.get_vocab()
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in _merges_of(probe)]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(learned.items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = norm
    tok.pre_tokenizer = split
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<unk>")
    fast.chat_template = INST
    return fast


def _merges_of(tok) -> list:
    import json

    return json.loads(tok.to_str())["model"]["merges"]


def train_tokenizers(out: Path, seed: int = 0) -> dict[str, Path]:
    """Train both tokenizers on `make_corpus(seed)`; save each under `out/<kind>`; check the fusions exist."""
    corpus = make_corpus(seed=seed)
    dirs = {}
    for kind, fn, size in (("bpe", _bpe_tokenizer, 420), ("sp", _sp_tokenizer, 500)):
        fast = fn(corpus, size)
        vocab = fast.get_vocab()
        texts = [fast.convert_tokens_to_string([t]) for t in vocab]
        for piece in FUSED:
            if not any(piece in t for t in texts):
                raise AssertionError(f"{kind} tokenizer: no token holds {piece!r} (vocabulary of {len(vocab)})")
        d = out / kind
        fast.save_pretrained(d)
        dirs[kind] = d
    return dirs


# ---- models ----------------------------------------------------------------------------------------
def _special_ids(tok) -> dict[str, int]:
    ids = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    if tok.bos_token_id is not None:
        ids["bos_token_id"] = tok.bos_token_id
    return {k: v for k, v in ids.items() if v is not None}


def build_family(family: Family, tokenizer_dir: Path, out: Path, seed: int = 0, train_steps: int = 80) -> Path:
    """Random-init `family.model_cls` sized for tests, trained briefly on the corpus; saved to `out`."""
    import transformers
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    tok = AutoTokenizer.from_pretrained(out)
    special = _special_ids(tok)
    if family.config_cls == "GPT2Config":  # GPT-2 names its sizes differently
        cfg = transformers.GPT2Config(vocab_size=len(tok), **family.overrides, **special)
    else:
        cfg = family.make_config(len(tok), special)
    torch.manual_seed(seed)
    model = getattr(transformers, family.model_cls)(cfg)
    if family.trained and train_steps:
        _train(model, tok, train_steps, seed, family.lr)
    else:
        with torch.no_grad():  # larger logits, so greedy decoding is far from ties
            model.get_output_embeddings().weight.mul_(8.0)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    return out


def _train(model, tok, steps: int, seed: int, lr: float, batch: int = 8, width: int = 48) -> None:
    """Adam steps of next-token prediction on SCRIPT repeated, so greedy decoding recites it from any prompt.

    Every third recital ends with EOS: greedy decoding never stops (p(EOS) is about 1/3), sampled rollouts
    sometimes do, so they differ in length and mining gets rewards that differ.
    """
    rng = random.Random(seed + 1)
    script = tok(SCRIPT, add_special_tokens=False)["input_ids"]
    ids = [i for k in range(40) for i in script + ([tok.eos_token_id] if k % 3 == 2 else [])]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        starts = [rng.randrange(len(ids) - width) for _ in range(batch)]
        x = torch.tensor([ids[s: s + width] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
