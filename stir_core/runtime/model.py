"""Load a Hugging Face causal LM through TransformerLens 4's `TransformerBridge`.

`load_model()` with no name gives the embedded testbed model in `assets/toy-reasoner`; any hub id or
local directory works the same way (`TransformerBridge.boot_transformers`). Layer specs follow the spec:
an int (negative from the end), a fraction in [0, 1] meaning `round(f * (n_layers - 1))`, or "a/b"
(parsed by `stir_core.config.parse_layer_spec`, which is torch-free).
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stir_core.config import resolve_layer
from stir_core.io.layout import DEFAULT_MODEL_DIR

DEFAULT_MODEL = "embedded"  # alias for DEFAULT_MODEL_DIR
EMBEDDED_ID = "embedded:toy-reasoner"

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class ModelLoadError(ValueError):
    """The model could not be found or loaded; the message says which and why."""


@dataclass(kw_only=True)
class LoadedModel:
    """A bridge plus the facts every stage needs. `bridge` owns the weights; nothing else is global."""

    bridge: Any  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: Any
    model_id: str
    revision: str | None
    device: torch.device
    dtype: torch.dtype

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    @property
    def n_ctx(self) -> int | None:
        """Positions the model can attend over (prompt + generated tokens), when the config says."""
        n = getattr(self.bridge.cfg, "n_ctx", None)
        return int(n) if n else None

    @property
    def hf_model(self) -> Any:
        """The wrapped Hugging Face model (for comparisons with `generate`; decoding goes through `backend`)."""
        return self.bridge.original_model

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.hf_model.parameters())

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else (self.tokenizer.eos_token_id or 0)

    def format_prompt(self, text: str, system: str | None = None) -> str:
        """Apply the tokenizer's chat template when it has one (with `system` as a system message, as the
        reference sends its tasks: stir/online/stir.py:293–297); otherwise return the text unchanged. A
        template that refuses a system role (Gemma's) gets it at the head of the user message."""
        if getattr(self.tokenizer, "chat_template", None):
            msgs = [{"role": "user", "content": text}]
            if system:
                msgs.insert(0, {"role": "system", "content": system})
            try:
                return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            except Exception:  # noqa: BLE001 - jinja raises TemplateError for "system role not supported"
                if not system:
                    raise
                msgs = [{"role": "user", "content": f"{system}\n\n{text}"}]
                return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return text

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of `text`, with BOS prepended when the tokenizer has one and it is not there yet."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        if add_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return list(ids)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def resolve_layer(self, spec: int | float | str) -> int:
        return resolve_layer(spec, self.n_layers)


def pick_device(device: str = "auto") -> torch.device:
    """`auto` prefers CUDA, then MPS, then CPU; an explicit device that is not there is an error."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for but torch sees no CUDA GPU")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError("device 'mps' was asked for but it is not available")
    if device != "cpu" and not device.startswith(("cuda", "mps")):
        raise ModelLoadError(f"unknown device {device!r}; use auto, cuda, mps or cpu")
    return torch.device(device)


def pick_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """`auto` is float32 on CPU (half precision is slow and lossy there) and bfloat16 on GPUs."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if dtype not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16")
    return _DTYPES[dtype]


def resolve_model_path(name_or_path: str | os.PathLike | None) -> str:
    """The embedded default for None/"embedded"; a local directory must hold a config and weights."""
    if name_or_path is None or str(name_or_path) in ("", DEFAULT_MODEL, EMBEDDED_ID):
        if not (DEFAULT_MODEL_DIR / "config.json").exists():
            raise ModelLoadError(f"the embedded model is missing: no config.json in {DEFAULT_MODEL_DIR} "
                                 "(train it with `stir toy-train`)")
        return str(DEFAULT_MODEL_DIR)
    name = str(name_or_path)
    path = Path(name).expanduser()
    looks_local = path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local:
        if not path.is_dir():
            raise ModelLoadError(f"model path {name!r} does not exist or is not a directory")
        if not (path / "config.json").exists():
            raise ModelLoadError(f"model path {name!r} has no config.json")
        read_config(path / "config.json")  # a damaged config.json is named as such, not as "not found"
        weights = [*path.glob("*.safetensors"), *path.glob("*.bin"), *path.glob("*.safetensors.index.json")]
        if not weights:
            raise ModelLoadError(f"model path {name!r} has a config.json but no weights (*.safetensors or *.bin)")
        return str(path.resolve())
    check_hub_reachable(name)
    return name  # a hub id


_CTX_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_sequence_length")
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers")
_WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")


def model_id_for(name_or_path: str | os.PathLike | None) -> str:
    """The id `load_model` will record for this name (checkable before loading): the embedded model gets a
    portable id, a local directory its absolute path, a hub id itself."""
    name = resolve_model_path(name_or_path)
    return EMBEDDED_ID if Path(name) == DEFAULT_MODEL_DIR else name


def read_config(path: str | Path) -> dict:
    """A model's config.json as a dict; `ModelLoadError` naming the file when it is unreadable."""
    import json

    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ModelLoadError(f"{path}: not a valid config.json ({type(err).__name__}: {err})") from None
    if not isinstance(d, dict):
        raise ModelLoadError(f"{path}: not a valid config.json (expected a JSON object)")
    return d


def _hub_config_path(name: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # noqa: BLE001 - an id the hub library rejects: not cached
        return None
    return Path(found) if isinstance(found, str) else None


def check_hub_reachable(name: str, timeout: float = 2.0) -> None:
    """Fail fast for a hub id that is neither cached nor reachable (instead of ~30 s of retries)."""
    if _hub_config_path(name) is not None:
        return
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ModelLoadError(f"model {name!r} is not a local directory and not in the Hugging Face cache, and "
                             "HF_HUB_OFFLINE is set; download it first or give a local path")
    import socket
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants

        endpoint = urlparse(constants.ENDPOINT)
    except Exception:  # noqa: BLE001 - fall back to the public hub
        endpoint = urlparse("https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise ModelLoadError(f"model {name!r} is not a local directory and not in the Hugging Face cache, and "
                             f"the hub ({host}) is unreachable ({err}); check the name, the network, or give "
                             "a local path") from None


def model_facts(name_or_path: str | os.PathLike | None) -> dict[str, int | None]:
    """{"n_layers", "n_ctx", "d_model"} read cheaply from the model's config.json (local, embedded or cached hub
    model) before loading any weights; values are None where the config does not say or is not at hand."""
    name = resolve_model_path(name_or_path)
    path = Path(name) / "config.json" if Path(name).is_dir() else _hub_config_path(name)
    out: dict[str, int | None] = {"n_layers": None, "n_ctx": None, "d_model": None}
    if path is None:
        return out
    cfg = read_config(path)
    cfg = {**cfg, **(cfg.get("text_config") or {})} if isinstance(cfg.get("text_config"), dict) else cfg
    for key, names in (("n_layers", _LAYER_KEYS), ("n_ctx", _CTX_KEYS), ("d_model", _WIDTH_KEYS)):
        v = next((cfg[k] for k in names if isinstance(cfg.get(k), int) and not isinstance(cfg.get(k), bool)), None)
        out[key] = v
    return out


SMALL_MODEL_PARAMS = 50_000_000


def configure_threads(model: LoadedModel, threads: int | str = "auto") -> int:
    """Set torch's CPU thread count for this process; returns it.

    `auto`: one thread for small models on CPU. Their matmuls are microseconds long, so OpenMP barriers
    dominate; with another busy process on the cores they wait for time slices (measured on 2 shared
    cores: 49 s with 2 threads vs 1.1 s with 1 for the same 32-problem decode). Larger models keep torch's
    default. Note: the setting does not reach threads that already ran torch work (e.g. a web server's
    worker threads); call this again from the thread that decodes.
    """
    if threads == "auto":
        if model.device.type != "cpu" or model.n_params >= SMALL_MODEL_PARAMS:
            return torch.get_num_threads()
        threads = 1
    torch.set_num_threads(int(threads))
    return int(threads)


def _unsupported(name: str, bridge_message: str) -> str:
    """One line for an architecture the bridge lacks (its own message lists all ~180 supported ones)."""
    import re
    from importlib.metadata import version

    found = re.search(r"Config architectures: (\[[^\]]*\])", bridge_message)
    archs = found.group(1) if found else "unknown"
    return (f"could not load model {name!r}: its architecture {archs} is not supported by TransformerLens "
            f"{version('transformer-lens')}'s TransformerBridge (README, 'Using a real model': the supported "
            "list, and how to register an adapter for a close architecture)")


def load_model(name_or_path: str | os.PathLike | None = None, device: str = "auto",
               dtype: str | torch.dtype = "auto", quiet: bool = True,
               threads: int | str | None = "auto", device_map: str | dict | None = None) -> LoadedModel:
    """Load a causal LM by hub id or local path (default: the embedded testbed model).

    `threads` goes to `configure_threads` (None leaves torch's thread count alone). Under a launcher
    (torchrun, accelerate) an unindexed `cuda` means this rank's GPU, `cuda:LOCAL_RANK`.
    `device="split"` (or an explicit Hugging Face `device_map`) spreads one model over several devices
    (see `placement.py`); `device` is then the embedding's device, where inputs go.

    Python's garbage collector is paused meanwhile (`stir_core.runtime.startup`: a cold import of TransformerLens
    and transformers takes ~30% less time).
    """
    from stir_core.runtime.startup import gc_paused

    with gc_paused():
        return _load_model(name_or_path, device, dtype, quiet, threads, device_map)


def _load_model(name_or_path, device, dtype, quiet, threads, device_map) -> LoadedModel:
    from transformer_lens.model_bridge import TransformerBridge

    from stir_core.runtime import distributed, placement

    name = resolve_model_path(name_or_path)
    dist = distributed.from_env()
    if device == "split" or device_map is not None:
        load_kw = placement.device_map_kwargs(device_map, dist)
        dev = pick_device("cuda" if device == "split" else device)  # for the dtype default; see below
    else:
        dev = distributed.rank_device(pick_device(device), dist)
        load_kw = {"device": str(dev)}
    dt = pick_dtype(dtype, dev)
    sink = io.StringIO()
    try:
        # The bridge prints weight-loading progress to stderr; keep the CLI and app output clean.
        with contextlib.redirect_stderr(sink) if quiet else contextlib.nullcontext():
            bridge = TransformerBridge.boot_transformers(name, dtype=dt, **load_kw)
    except OSError as err:
        raise ModelLoadError(f"could not load model {name!r}: not a local model directory and not found on the "
                             f"Hugging Face hub (offline?) — {err}") from err
    except Exception as err:  # noqa: BLE001 - the bridge raises many kinds; name the model in one clear error
        if str(err).startswith("Could not determine supported architecture"):
            raise ModelLoadError(_unsupported(name, str(err))) from err
        raise ModelLoadError(f"could not load model {name!r}: {type(err).__name__}: {err}") from err
    bridge.eval()
    if "device_map" in load_kw:
        dev = placement.input_device(bridge)
    tok = bridge.tokenizer
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    revision = getattr(bridge.original_model.config, "_commit_hash", None)
    # The embedded model gets a portable id (libraries built on it must not record this machine's path).
    model_id = model_id_for(name)
    model = LoadedModel(bridge=bridge, tokenizer=tok, model_id=model_id, revision=revision, device=dev, dtype=dt)
    if threads is not None:
        configure_threads(model, threads)
    return model
