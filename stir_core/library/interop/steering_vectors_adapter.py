"""Adapter to the `steering-vectors` library: our directions as its `SteeringVector`.

`layer_type="decoder_block"` hooks the output of `model.layers.{k}` — resid_post of block k, our layer k
— so the layer index is passed through unchanged. The package pins transformers<5 in its metadata; it
works on 5.x when installed with `pip install --no-deps steering-vectors==0.12.2`.
"""

from __future__ import annotations

import torch

from stir_core.library.interop.vectors import Directions


def available() -> str | None:
    """None when `steering_vectors` imports, else the reason it does not."""
    try:
        import steering_vectors  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure means "not usable here"
        return f"steering-vectors is not importable ({type(err).__name__}: {err})"
    return None


def to_steering_vector(d: Directions, dtype: torch.dtype = torch.float32):
    """A `steering_vectors.SteeringVector` with `layer_activations[layer]` = direction [d_model]."""
    reason = available()
    if reason is not None:
        raise ValueError(f"{reason}; install it with: pip install --no-deps steering-vectors==0.12.2")
    from steering_vectors import SteeringVector

    acts = {int(k): torch.as_tensor(v, dtype=dtype).clone() for k, v in sorted(d.directions.items())}
    return SteeringVector(layer_activations=acts, layer_type="decoder_block")
