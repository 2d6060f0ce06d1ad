"""`stir build`: mine → select → index from one YAML config, every output under one run directory.

    <run>/candidates/   Stage I output (a library directory of all mined entries)
    <run>/library/      Stage II+III output: the selected library, ready for `ToolIndex`, and its
                        CARD.md (`report.library_card`)
    <run>/build.json    what ran: config, counts, selection report, timings
    <run>/task.json     the task it mined (name, files, fields, problem hashes): a resume must match it

The task comes from the config's `task` section: a built-in name (`task: planted`) or a file task with one
file per split, e.g. `{name: gsm8k, files: {mine: train.jsonl, eval: test.jsonl}}` (`docs/tasks.md`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from stir_core import config
from stir_core.config import ConfigError, MineConfig, SelectConfig
from stir_core.io import atomic, jsonio, outputs
from stir_core.io.bounded import clip, read_json
from stir_core.library.format import ToolLibrary
from stir_core.library.index import ToolIndex
from stir_core.library.report import library_card
from stir_core.offline.checkpoint import discard_checkpoint
from stir_core.offline.mine import mine_candidates
from stir_core.offline.select import select_library
from stir_core.offline.shard_mine import mine_sharded
from stir_core.runtime import distributed
from stir_core.runtime.model import LoadedModel
from stir_core.tasks import Task, get_task, step_checker_of


@dataclass
class TaskSpec:
    """Which task to mine and evaluate. File tasks (`gsm8k`, `math500`, ...) need `files`: one file per split
    (`mine`, `eval`, `train`, `val`; paths relative to the working directory). `fields` maps roles
    (question, answer, solution, id, choices, answer_key) to the file's own column names; `template`
    overrides the prompt (`{question}` is replaced); `prompt_style` is `reference` (the authors' prompts) or
    `blank_lines` (ours; `PromptConfig` in config.py)."""

    name: str = "planted"
    files: dict[str, str] | None = None
    fields: dict[str, str] | None = None
    template: str | None = None
    prompt_style: str = "reference"

    def make(self) -> Task:
        """The task, its split files parsed and checked pairwise disjoint; a ValueError names any problem."""
        from stir_core.tasks.files import FORMATS

        if self.name in FORMATS:
            if not self.files:
                raise ValueError(f"task {self.name!r} reads local files: give task.files, e.g. "
                                 "{mine: train.jsonl, eval: test.jsonl}")
            try:
                task = get_task(self.name, paths=dict(self.files), fields=self.fields, template=self.template,
                                prompt_style=self.prompt_style)
                task.check_disjoint()
            except FileNotFoundError as err:
                raise ValueError(str(err)) from err
            return task
        if self.files or self.fields or self.template or self.prompt_style != "reference":
            raise ValueError(f"task {self.name!r} is built in (generated, not read from files); task.files, "
                             "task.fields, task.template and task.prompt_style apply only to file tasks")
        return get_task(self.name)

    def describe(self, task: Task) -> dict:
        """What was mined, for `task.json` and manifests: the spec plus a hash of each split's problems."""
        out = asdict(self)
        files = getattr(task, "paths", None)
        if files:
            import hashlib

            from stir_core.tasks.files import problem_hash

            out["problems"] = {}
            for split in sorted(files):
                digest = hashlib.blake2b(digest_size=12)
                rows = task.examples(split)
                for ex in rows:
                    digest.update(problem_hash(ex).encode())
                out["problems"][split] = {"n": len(rows), "hash": digest.hexdigest()}
        return out


@dataclass(kw_only=True)
class BuildConfig:
    model: str | None = None  # None: the embedded testbed model
    mine: MineConfig = field(default_factory=MineConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    task: TaskSpec | None = None  # None: the built-in task named by mine.task
    # Online knobs (StirConfig fields) that go with this library; `stir build` ignores them, `stir eval
    # --config` applies them before any --set. Validated on load so a typo fails before a model loads.
    online: dict = field(default_factory=dict)

    def task_spec(self) -> TaskSpec:
        return self.task if self.task is not None else TaskSpec(self.mine.task)

    def make_task(self) -> Task:
        """Build and check the task before any model loads: its files, split disjointness, the mining split,
        and `clean_prefixes` (`on` needs a task with a step checker)."""
        task = self.task_spec().make()
        files = getattr(task, "paths", None)
        if files is not None and self.mine.split not in files:
            raise ValueError(f"task {task.name!r} has no file for the mining split {self.mine.split!r} "
                             f"(task.files has {sorted(files)})")
        if self.mine.clean_prefixes == "on" and step_checker_of(task) is None:
            raise ValueError(f"mine.clean_prefixes is 'on' but task {task.name!r} has no step checker; "
                             "use 'off' (or 'auto', which is 'off' for this task)")
        return task

    def effective_clean_prefixes(self, task: Task) -> str:
        """`auto` resolved: `on` where the task has a step checker, else `off`."""
        if self.mine.clean_prefixes != "auto":
            return self.mine.clean_prefixes
        return "on" if step_checker_of(task) is not None else "off"

    @classmethod
    def small(cls) -> BuildConfig:
        """The quick default for the embedded testbed model (a few minutes on 2 CPU cores)."""
        # Our switches (clean_prefixes, unbounded M, dropping Δ = 0) as the demo library was built; see
        # configs/toy-small.yaml and STIR_SPEC.md's knob table. configs/reference.yaml is the paper's config.
        return cls(mine=MineConfig(n_problems=256, k_rollouts=8, max_new_tokens=96, layers=[2, 3], top_c=192,
                                   problems_per_batch=16, clean_prefixes="auto", max_control_points=None,
                                   drop_zero_delta=True),
                   select=SelectConfig(budget=192))

    @classmethod
    def from_dict(cls, d: dict) -> BuildConfig:
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise ConfigError(f"build config: expected a mapping with sections model, mine, select; got {clip(d)}")
        unknown = set(d) - {"model", "mine", "select", "task", "online"}
        if unknown:
            raise ConfigError(f"build config: unknown section(s) {clip(sorted(map(str, unknown)))}; expected model, task, mine, "
                              "select, online")
        model = d.get("model")
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise ConfigError(f"build config: model must be a hub id or a path, got {clip(model)}")
        mine = d.get("mine")
        mine = dict(mine) if isinstance(mine, dict) else mine
        if isinstance(mine, dict) and isinstance(mine.get("clean_prefixes"), bool):
            mine["clean_prefixes"] = "on" if mine["clean_prefixes"] else "off"  # YAML 1.1 reads off/on as bools
        spec = d.get("task")
        if spec is not None:
            spec = _task_spec({"name": spec} if isinstance(spec, str) else spec)
            mine = dict(mine or {})
            if mine.get("task", spec.name) != spec.name:
                raise ConfigError(f"build config: task.name is {spec.name!r} but mine.task is {clip(mine['task'])}; "
                                  "give the task once, in the task section")
            mine["task"] = spec.name
        online = d.get("online") or {}
        config.from_dict(config.StirConfig, online, "online")  # checked now: a typo fails before a model loads
        return cls(model=model, mine=config.from_dict(MineConfig, mine, "mine"),
                   select=config.from_dict(SelectConfig, d.get("select"), "select"), task=spec,
                   online=dict(online))

    @classmethod
    def from_yaml(cls, path: str | Path) -> BuildConfig:
        from stir_core.io.bounded import InputError, load_yaml

        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"build config {p}: not found" + (" (it is a directory)" if p.is_dir() else ""))
        try:  # no aliases, no duplicate keys, size-capped: the error names the file and the line
            data = load_yaml(p)
        except InputError as err:
            raise ConfigError(f"build config {err}") from None
        try:
            return cls.from_dict(data or {})
        except ConfigError as err:
            raise ConfigError(f"build config {p}: {str(err).removeprefix('build config: ')}") from None

    def to_dict(self) -> dict:
        return asdict(self)


def _task_spec(d) -> TaskSpec:
    if not isinstance(d, dict):
        raise ConfigError(f"build config [task]: expected a name or a mapping, got {clip(d)}")
    names = {f.name for f in fields(TaskSpec)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"build config [task]: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    for key in ("files", "fields"):
        if d.get(key) is not None and not isinstance(d[key], dict):
            raise ConfigError(f"build config [task]: {key} must be a mapping, got {type(d[key]).__name__}")
    if not isinstance(d.get("name", "planted"), str):
        raise ConfigError(f"build config [task]: name must be text, got {clip(d['name'])}")
    return TaskSpec(**d)


def check_task_stamp(out: str | Path, config: BuildConfig, task: Task) -> dict:
    """What `task.json` must say for this config; refuses a run directory mined with another task or files
    (cheap: no model). Returns the description."""
    described = {**config.task_spec().describe(task), "clean_prefixes": config.effective_clean_prefixes(task)}
    stamp = Path(out) / "task.json"
    if stamp.exists() and read_json(stamp, "task stamp") != json.loads(jsonio.dumps(described)):
        raise ValueError(f"{out} was mined with a different task or different files ({stamp}); "
                         "use another run directory")
    return described


def mine_run(model: LoadedModel, config: BuildConfig, out: Path, task: Task | None = None,
             progress=None, show_progress: bool = True) -> ToolLibrary | None:
    """Stage I into `<out>/candidates`, resuming from `<out>`'s checkpoint only for the same task and files.
    None on ranks other than 0 under a launcher (they only mine their shard)."""
    task = task if task is not None else config.make_task()
    out.mkdir(parents=True, exist_ok=True)
    described = check_task_stamp(out, config, task)
    atomic.write_json(out / "task.json", described, indent=1)
    if (dist := distributed.from_env()) is not None:  # under torchrun / accelerate: this rank's shard
        candidates = mine_sharded(model, config.mine, out, dist, progress, task, show_progress)
    else:
        candidates = mine_candidates(model, config.mine, run_dir=out, progress=progress, task=task,
                                     show_progress=show_progress)
    if candidates is None:
        return None
    candidates.manifest["task"] = described
    candidates.save(out / "candidates", overwrite=True)  # an intermediate of ours: rewritten
    return candidates


def check_build_output(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Claim `out_dir` as a build run directory, refusing before any work what `build_library` would
    refuse to overwrite; returns the path."""
    out = outputs.claim_run_dir(out_dir, "build")
    outputs.check_library_target(out / "library", overwrite)
    outputs.check_library_target(out / "candidates", overwrite=True)  # an intermediate of ours: rewritten
    return out


def select_and_index(candidates: ToolLibrary, cfg: SelectConfig, seed: int = 0) -> tuple[ToolLibrary, dict]:
    """Stage II + III: the selected library (validated by building its index) and a selection report."""
    lib, _ = select_library(candidates, cfg.budget, method=cfg.method, lam=cfg.lam, eps=cfg.eps,
                            min_per_control_point=cfg.min_per_control_point, seed=seed, force_mode=cfg.force_mode)
    index = ToolIndex(lib)
    # select.py writes the selection section; the index only adds its group sizes to it.
    lib.manifest["selection"]["index_groups"] = {f"L{layer}/m{m}": n
                                                 for (layer, m), n in sorted(index.group_sizes().items())}
    return lib, lib.manifest["selection"]


def build_library(model: LoadedModel, config: BuildConfig, out_dir: str | Path,
                  progress: Callable[[str, int, int, dict], None] | None = None,
                  show_progress: bool = True, overwrite: bool = False, restart: bool = False) -> Path | None:
    """Run all three stages; returns the library directory `<out_dir>/library` (None on ranks other than 0
    under a launcher: they only mine their shard).

    `out_dir` must be new, empty or a run directory of ours (`outputs.claim_run_dir`); an existing
    `<out_dir>/library` is replaced only with `overwrite`. `restart` discards a mining checkpoint."""
    task = config.make_task()
    out = check_build_output(out_dir, overwrite)
    if restart:
        discard_checkpoint(out)
    t0 = time.perf_counter()
    mine_cb = (lambda done, total, info: progress("mine", done, total, info)) if progress else None
    candidates = mine_run(model, config, out, task, progress=mine_cb, show_progress=show_progress)
    if candidates is None:  # a rank other than 0 under a launcher: its shard is written, rank 0 goes on
        return None
    t_mine = time.perf_counter() - t0
    if progress:
        progress("select", 0, 1, {"candidates": len(candidates)})
    if len(candidates) == 0:
        raise ValueError("mining produced no candidates (no problem had both correct and incorrect rollouts "
                         "at a control point); mine more problems or rollouts")
    lib, report = select_and_index(candidates, config.select, seed=config.mine.seed)
    lib.manifest["config"] = config.to_dict()
    lib.manifest["task"] = candidates.manifest.get("task")
    lib.save(out / "library", overwrite=overwrite)
    if progress:
        progress("index", 1, 1, {"candidates": len(candidates), "kept": len(lib)})
    summary = {"config": config.to_dict(), "task": candidates.manifest.get("task"),
               "mining_stats": candidates.manifest.get("mining_stats"),
               "selection": report, "timings_s": {"mine": t_mine, "total": time.perf_counter() - t0},
               **({"parallel": candidates.manifest["parallel"]} if "parallel" in candidates.manifest else {})}
    atomic.write_text(out / "build.json", jsonio.dumps(summary, indent=2, default=str) + "\n")
    atomic.write_text(out / "library" / "CARD.md", library_card(out))
    return out / "library"
