"""Sweep plans: a valid plan reads back as written; every malformed plan is refused before
any work, naming the file, the key and the expected form."""

from __future__ import annotations

from pathlib import Path

import pytest

from svfcheck.sweep.plan import PlanError, load_plan

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
name = "p"
seeds = [3, 1]
[resources]
num_cpus = 1.5
num_gpus = 0.25
max_retries = 4
[[series]]
name = "a"
preset = "induction-gpt2"
train = { max_steps = 50, seed = 2 }
steps = [50, 0]
[[series]]
name = "b"
source = "run:rel/run"
[[analysis]]
name = "ind"
task = "induction"
series = ["a"]
settings = { n_prompts = 4, n_boot = 200 }
"""


def test_a_plan_reads_back_as_written(write_plan):
    f = write_plan(GOOD)
    p = load_plan(f)
    assert (p.name, p.seeds) == ("p", (3, 1))
    assert (p.resources.num_cpus, p.resources.num_gpus, p.resources.max_retries) == (1.5, 0.25, 4)
    a, b = p.series
    assert (a.preset, dict(a.train), a.steps) == ("induction-gpt2", {"max_steps": 50, "seed": 2}, (0, 50))
    # a relative source is resolved against the plan's folder, not the working directory
    assert b.source == f"run:{(f.parent / 'rel/run').resolve()}" and b.steps == "all"
    (an,) = p.analyses
    assert (an.task, an.series, dict(an.settings)) == ("induction", ("a",), {"n_prompts": 4, "n_boot": 200})
    assert p.to_json()["series"][0]["steps"] == [0, 50]


def test_series_and_analysis_resources_override_the_plan_key_by_key(write_plan, tmp_path):
    """A series' ``resources`` go to its training task, an analysis' to its head
    identification, checkpoint and random-init tasks (and a spec's tasks); keys they leave
    out come from the plan's ``[resources]``."""
    from svfcheck.sweep.plan import Resources
    from svfcheck.sweep.tasks import checkpoint_tasks, heads_task, spec_tasks, train_tasks

    (tmp_path / "run").mkdir()
    f = write_plan(GOOD.replace("steps = [50, 0]", "steps = [50, 0]\nresources = { num_gpus = 1 }")
                   .replace('series = ["a"]', 'series = ["a"]\nresources = { num_cpus = 2, max_retries = 0 }'))
    p = load_plan(f)
    a, b = p.series
    (an,) = p.analyses
    assert p.train_resources(a) == Resources(num_cpus=1.5, num_gpus=1.0, max_retries=4)
    assert p.train_resources(b) == p.resources == Resources(1.5, 0.25, 4)  # no own table: the plan's
    assert p.analysis_resources(an) == Resources(num_cpus=2.0, num_gpus=0.25, max_retries=0)
    assert p.to_json()["series"][0]["resources"] == {"num_cpus": 1.5, "num_gpus": 1.0, "max_retries": 4}
    # what an engine checks before any work: only the requests tasks will make, each named
    assert p.resource_requests() == [("the training task of series 'a'", Resources(1.5, 1.0, 4)),
                                     ("each task of analysis 'ind'", Resources(2.0, 0.25, 0))]
    (t,) = train_tasks(p, tmp_path / "out")
    assert t.resources == p.train_resources(a) and t.payload["gpu"] is True
    # the analysis' tasks, on a series of existing checkpoints (a plain folder of one step)
    from tests._tiny_models import paragraph_word_tokenizer, save_tiny_folder

    save_tiny_folder(tmp_path / "ck" / "step0", "gpt2", paragraph_word_tokenizer(), seed=0)
    g = write_plan(GOOD.replace('preset = "induction-gpt2"\ntrain = { max_steps = 50, seed = 2 }\nsteps = [50, 0]',
                                f'source = "folder:{tmp_path / "ck"}"')
                   .replace('series = ["a"]', 'series = ["a"]\nresources = { num_cpus = 2 }')
                   + '[[analysis]]\nname = "s"\nspec = "%s"\nresources = { num_cpus = 3 }\n' % (REPO / "analyses" / "minilm-l6-text.toml"))
    q = load_plan(g)
    ind, sp = q.analyses
    h = heads_task(q, tmp_path / "out", ind, q.series[0])
    cks = checkpoint_tasks(q, tmp_path / "out", ind, q.series[0], h.key, {"heads": {}})
    assert h.resources == Resources(2.0, 0.25, 4) and {c.resources for c in cks} == {Resources(2.0, 0.25, 4)}
    assert [c.kind for c in cks] == ["checkpoint", "random-init"] * 2  # two seeds
    assert {x.resources for x in spec_tasks(q, sp)} == {Resources(3.0, 0.25, 4)}


def test_shipped_plans_load():
    for f in sorted((REPO / "plans").glob("*.toml")):
        assert load_plan(f).analyses, f


BAD = [  # (edit of GOOD, key named in the error, fragment)
    (lambda t: "colour = 1\n" + t, "colour", "unknown key"),
    (lambda t: t.replace("seeds = [3, 1]", "seeds = [1, 1]"), "seeds", "distinct"),
    (lambda t: t.replace("seeds = [3, 1]", "seeds = [-1]"), "seeds", "[0, 2^32)"),
    (lambda t: t.replace("seeds = [3, 1]", "seeds = []"), "seeds", "got []"),
    (lambda t: t.replace("num_cpus = 1.5", "num_cpus = 0"), "resources.num_cpus", "in (0, 256]"),
    (lambda t: t.replace("num_gpus = 0.25", "num_gpus = -1"), "resources.num_gpus", "in [0, 64]"),
    (lambda t: t.replace("max_retries = 4", "max_retries = 99"), "resources.max_retries", "[0, 10]"),
    (lambda t: t.replace('preset = "induction-gpt2"', 'preset = "gpt5"'), "series[0].preset", "one of induction-gpt2"),
    (lambda t: t.replace('preset = "induction-gpt2"', 'preset = "induction-gpt2"\nsource = "x"'), "series[0].preset",
     "exactly one of preset and source"),
    (lambda t: t.replace("max_steps = 50", "max_stepz = 50"), "series[0].train.max_stepz", "unknown key"),
    (lambda t: t.replace("max_steps = 50", "max_steps = -5"), "series[0].train", "max_steps"),
    (lambda t: t.replace("steps = [50, 0]", "steps = [0, 0]"), "series[0].steps", "distinct"),
    (lambda t: t.replace("steps = [50, 0]", 'steps = "some"'), "series[0].steps", "first-middle-last"),
    (lambda t: t.replace('name = "b"', 'name = "a"'), "series[1].name", "already the name of series[0]"),
    (lambda t: t.replace('name = "b"', 'name = "../x"'), "series[1].name", "letters, digits"),
    (lambda t: t.replace('series = ["a"]', 'series = ["zz"]'), "analysis[0].series", "unknown series 'zz'"),
    (lambda t: t.replace('task = "induction"', 'task = "qa"'), "analysis[0].task", "one of"),
    (lambda t: t.replace("n_prompts = 4", "n_prompts = 0"), "analysis[0].settings", "n_prompts"),
    (lambda t: t.replace("n_prompts = 4", "seed = 4"), "analysis[0].settings.seed", "unknown key"),
    (lambda t: t.replace('task = "induction"', 'spec = "nope.toml"'), "analysis[0].settings",
     "does not apply to a spec analysis"),
    (lambda t: t.split("[[analysis]]")[0], "analysis", "no [[analysis]] given"),
    (lambda t: 'series = 3\n[[analysis]]\nname = "s"\ntask = "text"\n', "series", "got integer 3"),
    (lambda t: t + "[[analysis]]\nname = \"ind\"\ntask = \"text\"\n", "analysis[1].name", "already the name"),
    (lambda t: t.replace("steps = [50, 0]", "steps = [50, 7, 0]"), "series[0].steps",
     "the run will save no checkpoint at steps [7]; expected steps among its checkpoints [0, 1, 2, 4, 8, 16, 32, 50]"),
    (lambda t: t.replace("steps = [50, 0]", "steps = [50, 0]\nresources = { num_gpus = -0.5 }"),
     "series[0].resources.num_gpus", "in [0, 64]"),
    (lambda t: t.replace("steps = [50, 0]", "steps = [50, 0]\nresources = { gpus = 1 }"),
     "series[0].resources.gpus", "unknown key"),
    (lambda t: t.replace('source = "run:rel/run"', 'source = "run:rel/run"\nresources = { num_cpus = 2 }'),
     "series[1].resources", "only applies to a preset series"),
    (lambda t: t.replace('series = ["a"]', 'series = ["a"]\nresources = { max_retries = 11 }'),
     "analysis[0].resources.max_retries", "[0, 10]"),
    (lambda t: t.replace('series = ["a"]', 'series = ["a"]\nresources = 2'), "analysis[0].resources", "a table"),
]


@pytest.mark.parametrize("edit, key, fragment", BAD, ids=[f"{k}-{i}" for i, (_, k, _) in enumerate(BAD)])
def test_bad_plans_are_refused_naming_the_key(write_plan, edit, key, fragment):
    f = write_plan(edit(GOOD))
    with pytest.raises(PlanError) as e:
        load_plan(f)
    msg = str(e.value)
    assert e.value.key == key and fragment in msg and msg.startswith(str(f)), msg


def test_a_spec_analysis_must_load(write_plan, tmp_path):
    (tmp_path / "broken.toml").write_text("[model]\nname = 3\n")
    f = write_plan('[[analysis]]\nname = "s"\nspec = "broken.toml"\n')
    with pytest.raises(PlanError, match=r"analysis\[0\]\.spec: the spec does not load: .*broken.toml: model.name"):
        load_plan(f)


def test_task_analyses_need_series_and_files_must_be_plans(write_plan, tmp_path):
    with pytest.raises(PlanError, match="series: task analyses need checkpoint series"):
        load_plan(write_plan('[[analysis]]\nname = "i"\ntask = "induction"\n'))
    with pytest.raises(PlanError, match="no such file"):
        load_plan(tmp_path / "missing.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PlanError, match="not UTF-8"):
        load_plan(tmp_path / "bin.toml")
    with pytest.raises(PlanError, match="malformed TOML"):
        load_plan(write_plan("[[series]\n"))


def test_model_sources_keep_their_series_name_and_resolve_folders(write_plan):
    """``model:`` sources: a folder relative to the plan becomes absolute (revision and step
    kept); a hub id or offline name is left as written; the series keeps its own name."""
    f = write_plan("""\
        seeds = [0]
        [[series]]
        name = "mine"
        source = "model:final#200"
        [[series]]
        name = "hub"
        source = "model:org/m@v2#7"
        [[series]]
        name = "offline"
        source = "model:smollm2-135m"
        [[analysis]]
        name = "a"
        task = "induction"
        """)
    (f.parent / "final").mkdir()
    p = load_plan(f)
    assert [s.name for s in p.series] == ["mine", "hub", "offline"]
    assert [s.source for s in p.series] == [f"model:{(f.parent / 'final').resolve()}#200", "model:org/m@v2#7",
                                            "model:smollm2-135m"]
