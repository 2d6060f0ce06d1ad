"""Pre-flight checks shared by the CLI and the app: does the library belong to this model, does the prompt
fit the model's context. Each refuses with one sentence naming the problem, before any decoding."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from stir_core.library.format import MANIFEST_FILE, LibraryError, ToolLibrary


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    return pa.is_absolute() and pb.is_absolute() and pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def library_model_check(library: ToolLibrary, model_id: str, revision: str | None = None,
                        allow_mismatch: bool = False) -> list[str]:
    """Refuse (`LibraryError`) a library whose manifest names another model (or revision) than the one
    loaded, unless `allow_mismatch`; returns the warnings to print and record in the traces."""
    where = str(library.path / MANIFEST_FILE) if library.path else f"<in-memory library>/{MANIFEST_FILE}"
    lib_id = str(library.manifest.get("model_id") or "")
    lib_rev = str(library.manifest.get("model_revision") or "")
    if not lib_id:
        return [f"{where}: records no model_id, so it cannot be checked against model {model_id!r}"]
    problems = []
    if not _same_model(lib_id, model_id):
        problems.append(f"the library was mined on model {lib_id!r}, not {model_id!r}")
    elif lib_rev and revision and lib_rev != revision:
        problems.append(f"the library was mined on revision {lib_rev!r} of {lib_id!r}, this is {revision!r}")
    if not problems:
        return []
    if not allow_mismatch:
        raise LibraryError(f"{where}: {problems[0]}; pass --allow-model-mismatch to use it anyway")
    return [f"model mismatch allowed: {problems[0]}"]


def context_problem(n_prompt: int, max_new_tokens: int, n_ctx: int | None) -> str | None:
    """Why `n_prompt` prompt tokens plus `max_new_tokens` do not fit `n_ctx` positions (None: they fit)."""
    if n_ctx is None:
        return None
    if n_prompt >= n_ctx:
        return f"the prompt is {n_prompt} tokens but the model's context is {n_ctx} positions"
    if n_prompt + max_new_tokens > n_ctx:
        return (f"the prompt ({n_prompt} tokens) plus max_new_tokens={max_new_tokens} exceeds the model's "
                f"context of {n_ctx} positions (at most {n_ctx - n_prompt} new tokens fit)")
    return None


def check_prompts_fit(model, prompts: Sequence[str], max_new_tokens: int,
                      names: Sequence[str] | None = None) -> None:
    """Raise ValueError for the first formatted prompt that, with `max_new_tokens`, overflows the context."""
    n_ctx = model.n_ctx
    if n_ctx is None:
        return
    for i, p in enumerate(prompts):
        why = context_problem(len(model.encode(p)), max_new_tokens, n_ctx)
        if why:
            who = f"example {names[i]}" if names else f"prompt {i}"
            raise ValueError(f"{who}: {why}")


def fit_prompt(model, text: str, max_new_tokens: int) -> tuple[str, int, str | None]:
    """(formatted prompt text, max_new_tokens, warning) that fit the context: the prompt keeps its last
    tokens (where the question ends) when too long; max_new_tokens shrinks to what is left. The warning is
    None when nothing changed. For the app, which truncates visibly instead of refusing."""
    n_ctx = model.n_ctx
    if n_ctx is None:
        return text, max_new_tokens, None
    ids = model.encode(text)
    if context_problem(len(ids), max_new_tokens, n_ctx) is None:
        return text, max_new_tokens, None
    keep_new = max(1, min(max_new_tokens, n_ctx // 4))
    if len(ids) + keep_new > n_ctx:
        cut = len(ids) - (n_ctx - keep_new)
        bos = model.tokenizer.bos_token_id
        body = ids[1:] if bos is not None and ids and ids[0] == bos else ids
        text = model.tokenizer.decode(body[cut:], skip_special_tokens=False)
        warning = (f"the prompt ({len(ids)} tokens) did not fit the model's context of {n_ctx} positions: "
                   f"its first {cut} tokens were dropped and max_new_tokens set to {keep_new}")
        return text, keep_new, warning
    new = n_ctx - len(ids)
    return text, new, (f"max_new_tokens={max_new_tokens} does not fit after the {len(ids)}-token prompt "
                       f"(context {n_ctx}): decoding {new} tokens")
