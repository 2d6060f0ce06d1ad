"""`configs/reference.yaml` is the authors' reference configuration, field by field.

The reference values are transcribed from sznnzs/LLM-Latent-Action: `configs/math.yaml` (the config the
paper's runs use) and, for fields it leaves out, the dataclass defaults in `stir/config.py`. Token budgets
and data are model- and task-specific and are the only declared exceptions (STIR_SPEC.md, knob table).
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

from stir_core.config import MineConfig, SelectConfig
from stir_core.offline.build import BuildConfig
from stir_core.online.methods import StirConfig

ROOT = Path(__file__).resolve().parent.parent

# our field -> the reference's value (reference key in the comment)
REFERENCE_MINE = {
    "n_problems": 100,  # task.max_train_examples
    "k_rollouts": 8,  # offline_mine.K
    "temperature": 0.7, "top_p": 0.95, "eta0": 0.01,
    "layers": [0.6],  # offline_mine.candidate_layers
    "method": "contrastive", "require_correct_and_incorrect": True,
    "k_pos": 2, "k_neg": 3,  # offline_mine.K_pos / K_neg
    "min_incorrect": 1,  # min_incorrect_rollouts
    "pos_source": "rollout_or_gold",
    "max_control_points": 8,  # control_points.M
    "top_c": 128,  # offline_mine.keep_top_C
    "seed": 0,
    # behaviours of stir/offline/stage1.py::mine_candidates, as our switches
    "clean_prefixes": "off", "gold_reward": "penalised", "drop_zero_delta": False, "random_quality": "clamp",
    "split_rule": "reference",
}
REFERENCE_SELECT = {"budget": 256, "method": "dpp", "lam": 0.5, "eps": 1e-4, "min_per_control_point": 8,
                    "force_mode": "reference"}
REFERENCE_ONLINE = {
    "k_retrieve": 8, "top_l": 4, "probe_tokens": 4, "beta": 2.0, "rho": 0.1, "k_scale": 1.0,
    "tau_null": 0.0, "min_sim": 0.0, "min_entries": 1, "delimiter": "\n\n",
    "max_control_points": 7,  # M = 8 segments: tools are used after segments 1..M-1
    "probe_scale": 1.0, "positions": "last",  # SteerVectorRequest(scale=1.0, prefill_trigger_positions=[-1])
    "center_keys": False, "layer": None,  # retrieval pools every layer of the memory (online/memory.py:95–110)
    "scope": "segment", "probe_stop": "delimiter", "random_choice_gate": "none",  # stir.py:788–820, 581–588, 684–721
}
BUDGETS = {("mine", "max_new_tokens"), ("online", "max_new_tokens")}  # reference: 16384 each
# Data (the reference mines math500 on its eval split; we never do) and ours with no effect on results.
DATA_OR_NO_EFFECT = {("mine", "problems_per_batch"), ("mine", "capture"), ("online", "preview"), ("online", "schedule"),
                  ("online", "seed"), ("mine", "task"), ("mine", "split")}


def test_reference_yaml_matches_the_reference_config_field_by_field():
    cfg = BuildConfig.from_yaml(ROOT / "configs" / "reference.yaml")
    for section, want, got in (("mine", REFERENCE_MINE, asdict(cfg.mine)),
                               ("select", REFERENCE_SELECT, asdict(cfg.select)),
                               ("online", REFERENCE_ONLINE, cfg.online)):
        for key, value in want.items():
            assert got[key] == value, f"[{section}] {key}: {got[key]!r}, reference {value!r}"
    # Every field of ours is either a reference value above, a declared budget, or has no effect on results.
    covered = {("mine", k) for k in REFERENCE_MINE} | {("select", k) for k in REFERENCE_SELECT} | BUDGETS
    covered |= {("online", k) for k in REFERENCE_ONLINE} | DATA_OR_NO_EFFECT
    for section, kind in (("mine", MineConfig), ("select", SelectConfig)):
        missing = {f.name for f in fields(kind)} - {k for s, k in covered if s == section}
        assert not missing, f"[{section}] fields with no stated reference value: {sorted(missing)}"
    assert set(cfg.online) <= {k for s, k in covered if s == "online"}
    StirConfig().with_overrides(**cfg.online)  # every online key is a real knob


def test_mining_and_selection_defaults_are_the_reference_behaviour():
    mine, select = MineConfig(), SelectConfig()
    for key in ("clean_prefixes", "gold_reward", "drop_zero_delta", "random_quality", "split_rule",
                "max_control_points"):
        assert getattr(mine, key) == REFERENCE_MINE[key], key
    assert select.force_mode == "reference"
