"""Bounded reading of what users hand us: configs, manifests, task files, and the values quoted back.

Every reader here refuses, with one line that names the file (and the line where there is one), input that
would cost far more than its size suggests or blow the interpreter's stack:

    clip(value)                   a short, bounded repr for error messages (never the whole value)
    load_yaml(path, what)         YAML without aliases/anchors (a 1 KB "billion laughs" expands to GBs)
                                  and without duplicate keys (the second `budget:` silently won before)
    read_json(path, what)         size-capped, depth-capped, strict (no NaN/Infinity) JSON
    iter_jsonl(path)              JSON Lines streamed one bounded line at a time
    check_size(path, what)        refuse a file over the cap from its size alone (before any read)

The caps are generous for real inputs and overridable by environment variables (`STIR_MAX_INPUT_MB` for
data and task files, `STIR_MAX_CONFIG_KB` for YAML configs) so a genuinely large dataset is one export away.
"""

from __future__ import annotations

import json
import os
import reprlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

MAX_DEPTH = 64  # JSON/YAML nesting; our manifests and task rows are < 10 deep
MAX_LINE_BYTES = 16 << 20  # one JSONL row
_MB = 1 << 20


class InputError(ValueError):
    """A user's file or value we refuse to read; the message names it."""


_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlong = 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxdict = 6
_REPR.maxlevel = 3


def clip(value: Any, limit: int = 80) -> str:
    """A repr of `value` at most about `limit` characters long, built without formatting the whole value
    (`reprlib`), so an error message quoting a 4 MB string or a huge list stays one short line.

    >>> clip("x" * 1000)[:12], len(clip("x" * 1000)) <= 80
    ("'xxxxxxxxxxx", True)
    >>> clip([1, 2])
    '[1, 2]'
    """
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def max_input_bytes() -> int:
    """The size cap of data/task files (`STIR_MAX_INPUT_MB`, default 256 MiB)."""
    return _env_int("STIR_MAX_INPUT_MB", 256) * _MB


def max_config_bytes() -> int:
    """The size cap of YAML configs (`STIR_MAX_CONFIG_KB`, default 1 MiB)."""
    return _env_int("STIR_MAX_CONFIG_KB", 1024) * 1024


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise InputError(f"{name}={clip(raw)}: expected a whole number") from None
    if value <= 0:
        raise InputError(f"{name}={value}: must be > 0")
    return value


def _human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", _MB), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def check_size(path: str | Path, what: str, max_bytes: int | None = None) -> int:
    """The size of `path`, refused (before any byte is read) when it is over `max_bytes`."""
    path = Path(path)
    cap = max_input_bytes() if max_bytes is None else max_bytes
    size = path.stat().st_size
    if size > cap:
        env = "STIR_MAX_CONFIG_KB" if what == "config" else "STIR_MAX_INPUT_MB"
        raise InputError(f"{path}: the {what} file is {_human(size)}, over the {_human(cap)} limit for "
                         f"{what} files (raise it with {env} if this is intended); nothing was read")
    return size


def _decode(data: bytes, path: Path, where: str | None = None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{where or path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
                         f"{err.start}); is it a binary file?") from None


def depth(obj: Any) -> int:
    """Nesting depth of plain JSON data (a scalar is 0), computed without recursion."""
    best, stack = 0, [(obj, 0)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            o = list(o.values())
        if isinstance(o, list):
            best = max(best, d + 1)
            stack.extend((v, d + 1) for v in o if isinstance(v, (dict, list)))
    return best


def _no_constant(c: str) -> Any:
    raise ValueError(f"non-JSON constant {c}")


def loads(text: str, where: str, max_depth: int = MAX_DEPTH) -> Any:
    """Strict JSON of `text` (no NaN/Infinity), at most `max_depth` deep; errors name `where`."""
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deep to read (the limit is {max_depth} levels)") from None
    except ValueError as err:
        raise InputError(f"{where}: not valid JSON ({clip(str(err), 120)})") from None
    if depth(obj) > max_depth:
        raise InputError(f"{where}: JSON nested {depth(obj)} levels deep; the limit is {max_depth}")
    return obj


def read_text(path: str | Path, what: str, max_bytes: int | None = None) -> str:
    """The UTF-8 text of `path`, refused by size first; errors name the file."""
    path = Path(path)
    check_size(path, what, max_bytes)
    return _decode(path.read_bytes(), path)


def read_json(path: str | Path, what: str = "JSON", max_bytes: int | None = None,
              max_depth: int = MAX_DEPTH) -> Any:
    """Strict, size- and depth-capped JSON of `path`; every error is an `InputError` naming the file."""
    path = Path(path)
    return loads(read_text(path, what, max_bytes), str(path), max_depth)


def iter_jsonl(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES, max_depth: int = MAX_DEPTH,
               max_bytes: int | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSON Lines file, read one bounded line at a time
    (a file with no newline costs at most `max_line_bytes`); errors name the file and the line."""
    path = Path(path)
    check_size(path, "data", max_bytes)
    with open(path, "rb") as f:
        i = 0
        while True:
            raw = f.readline(max_line_bytes + 1)
            if not raw:
                return
            i += 1
            where = f"{path.name} line {i}"
            if len(raw) > max_line_bytes:
                raise InputError(f"{where}: a line longer than {_human(max_line_bytes)}; "
                                 "is it a JSON Lines file?")
            if b"\x00" in raw:
                raise InputError(f"{where}: holds NUL bytes; {path} looks like a binary file, not JSON Lines")
            line = _decode(raw, path, where)
            if line.strip():
                yield i, loads(line, where, max_depth)


# --- YAML ------------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases/anchors (expansion bombs) and duplicate keys, naming the line."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise InputError(f"line {line}: YAML aliases (*{event.anchor[:30]}) are not allowed in a "
                             "config; write the value out")
        if getattr(event, "anchor", None) is not None:
            raise InputError(f"line {line}: YAML anchors (&{event.anchor[:30]}) are not allowed in a "
                             "config; write the value out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader refuses it with its own message
                break
            if first is not None:
                kind = "section" if node.start_mark.column == 0 and key_node.start_mark.column == 0 else "key"
                raise InputError(f"line {line}: duplicate {kind} {clip(key, 40)} (first at line {first}); "
                                 "give it once")
            seen[key] = line
        return super().construct_mapping(node, deep)


def loads_yaml(text: str, where: str) -> Any:
    """Strict YAML of `text` (see `_StrictLoader`); every error is an `InputError` naming `where`."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader
    except InputError as err:
        raise InputError(f"{where} {err}") from None
    except RecursionError:
        raise InputError(f"{where}: YAML nested too deep to read") from None
    except yaml.YAMLError as err:
        raise InputError(f"{where}: not valid YAML ({clip(' '.join(str(err).split()), 160)})") from None
    if depth(data) > MAX_DEPTH:
        raise InputError(f"{where}: YAML nested {depth(data)} levels deep; the limit is {MAX_DEPTH}")
    return data


def load_yaml(path: str | Path, what: str = "config") -> Any:
    """Strict, size-capped YAML of `path`; errors name the file and the line."""
    path = Path(path)
    return loads_yaml(read_text(path, what, max_config_bytes()), str(path))
