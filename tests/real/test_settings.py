"""SADSettings: one validated, serialisable object for an analysis's settings."""

from __future__ import annotations

import json

import pytest
import torch

from svfcheck.real.settings import SADSettings
from svfcheck.tasks.circuits import GPT2_IOI_PAPER_HEADS


@pytest.mark.parametrize("kw,needle", [
    ({"heads": "some"}, "heads must be one of"),
    ({"heads": []}, "empty list"),
    ({"selection": "best"}, "selection must be one of"),
    ({"dtype": "float16"}, "dtype must be one of"),
    ({"basis": "delta"}, "basis must be one of"),
    ({"seed": -1}, "seed must be a whole number in [0, 4294967295]"),
    ({"seed": True}, "seed must be a whole number"),
    ({"n_boot": 99}, "n_boot must be a whole number >= 100"),
    ({"batch_size": 0}, "batch_size"),
    ({"discover_top": 0}, "discover_top"),
    ({"memory_budget_gb": 0}, "memory_budget_gb must be a number of GB in [0.01, 4096]"),
    ({"memory_budget_gb": -1.0}, "memory_budget_gb"),
    ({"memory_budget_gb": float("nan")}, "memory_budget_gb"),
    ({"memory_budget_gb": 1e9}, "memory_budget_gb"),
    ({"memory_budget_gb": True}, "memory_budget_gb"),
    ({"memory_budget_gb": "2"}, "memory_budget_gb"),
])
def test_bad_settings_are_refused_with_the_field_named(kw, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        SADSettings(**kw)


@pytest.mark.parametrize("budget", [2.0, 0.5, None])
@pytest.mark.parametrize("heads", ["all", ((0, 1), (2, 3)), GPT2_IOI_PAPER_HEADS])
def test_json_round_trip(heads, budget):
    s = SADSettings(heads=heads, selection="top", seed=3, dtype="float64", n_boot=500, memory_budget_gb=budget)
    back = SADSettings.from_json(json.loads(json.dumps(s.to_json())))
    assert back == s and back.memory_budget_gb == budget
    old = s.to_json()
    del old["memory_budget_gb"]  # settings saved before the budget existed read back with the default
    assert SADSettings.from_json(old).memory_budget_gb == 2.0


def test_normalisation_and_replace():
    s = SADSettings(heads=[[1, 2]], dtype=torch.float32)
    assert s.heads == ((1, 2),) and s.dtype == "float32" and s.torch_dtype is torch.float32
    t = s.replace(seed=5)
    assert t.seed == 5 and s.seed == 0 and t.heads == s.heads
    with pytest.raises(ValueError, match="unknown SAD settings"):
        SADSettings.from_json({"seeds": 1})


SPEC_HEAD = """name = "t"
[model]
name = "smollm2-135m"
[task]
kind = "ioi"
n_prompts = 5
[[condition]]
kind = "max_reconstruction_error"
bound = 1e-4
"""


@pytest.mark.parametrize("settings", [
    SADSettings(),
    SADSettings(heads="all", selection="top", seed=7, dtype="float64", basis="zero", n_boot=500, n_boot_head=500,
                batch_size=3),
    SADSettings(heads=((0, 1), (2, 3)), selection="threshold"),
    SADSettings(heads="discover", discover_top=2, n_boot=2000),
    SADSettings(heads="paper", circuit="gpt2", selection="circuit"),
    SADSettings(memory_budget_gb=0.25),
    SADSettings(memory_budget_gb=6),
])
def test_toml_is_read_back_by_the_gate_as_the_same_settings(settings, tmp_path):
    from svfcheck.gate.spec import load_spec

    f = tmp_path / "s.toml"
    f.write_text(SPEC_HEAD + "\n" + settings.to_toml())
    back = load_spec(f).settings
    assert back == settings and back.memory_budget_gb == settings.memory_budget_gb


def test_what_a_spec_cannot_say_is_refused():
    with pytest.raises(ValueError, match="CircuitHead"):
        SADSettings(heads=GPT2_IOI_PAPER_HEADS).to_toml()
    with pytest.raises(ValueError, match="n_boot_head"):
        SADSettings(n_boot=5000, n_boot_head=200).to_toml()
    with pytest.raises(ValueError, match="memory budget"):
        SADSettings(memory_budget_gb=None).to_toml()
