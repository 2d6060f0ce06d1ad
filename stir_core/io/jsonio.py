"""Strict JSON for everything we write: non-finite numbers become null, and `allow_nan=False` is enforced.

Python's `json` writes `NaN`/`Infinity` by default, which is not JSON: browsers, `jq` and other languages
refuse the file. Our numbers go non-finite legitimately (an unmeasured mean reward, a singular kernel's
log det of -inf), so every writer passes its object through `finite` (None for a non-finite float, at any
depth) and serialises with `dumps`, which then cannot fail on a number.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(obj: Any) -> Any:
    """`obj` with every non-finite float (Python or numpy, at any depth of dicts/lists/tuples) as None.

    >>> finite({"a": float("nan"), "b": [1.5, float("-inf")], "c": "x"})
    {'a': None, 'b': [1.5, None], 'c': 'x'}
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if type(obj).__module__ == "numpy" and hasattr(obj, "item"):  # numpy scalars and 0-d arrays
        return finite(obj.item()) if getattr(obj, "ndim", 0) == 0 else finite(obj.tolist())
    return obj


def dumps(obj: Any, indent: int | None = None, default: Any = None, **kw: Any) -> str:
    """Strict JSON text of `finite(obj)` (never NaN/Infinity)."""
    return json.dumps(finite(obj), indent=indent, allow_nan=False, default=default, **kw)
