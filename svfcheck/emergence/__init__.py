"""SAD emergence over training: checkpoint series and small training runs (paper Fig. 7b, 8, 9b).

- :mod:`.series` — :class:`CheckpointSeries`, a first-class ordered list of (step, locator)
  from a folder, a Pythia-style hub model, or one of our training runs.
- :mod:`.corpus` — the offline English corpus and byte/char tokenizers.
- :mod:`.tasks` — synthetic induction data + metric; byte-level text data.
- :mod:`.config` — :class:`LMSpec` (architecture) and :class:`LMTrainConfig` (one run); presets
  ``induction-gpt2``, ``induction-llama`` and ``text-llama``.
- :mod:`.train` — :func:`train_run`, the training loop.
- :mod:`.records` — :class:`RunResult` and :func:`load_run`; :mod:`.runfiles` — the run
  folder's files (``run.json``, ``timing.json``, ``resume.safetensors``, ``step{N}/``).
- :mod:`.heads` — induction / previous-token head scores from attention patterns.
- :mod:`.sweep` — resumable per-checkpoint analysis, results keyed by step.
- :mod:`.sad_sweep` — SAD over training: fixed prompts, heads chosen by pattern at the final
  checkpoint, training-independent pairs, S (SVD / both controls), k, effects per role and
  overall at every step, and the final-vs-initial contrast. Its parts: :mod:`.settings`
  (:class:`EmergenceSettings`, :class:`HeadSet`, :func:`default_settings`), :mod:`.prompts`,
  :mod:`.head_sets` (:func:`identify_heads`), :mod:`.pairs`, :mod:`.checkpoint` (one
  checkpoint's analysis), :mod:`.summaries`, :mod:`.sweep_key`, :mod:`.contrast`.
- :mod:`.figures` — Fig. 7b (S vs step), Fig. 9b (k vs step), Fig. 8 (first/last decompositions).
- :mod:`.cli` — ``svfcheck emergence --run PRESET --out DIR`` / ``--checkpoints SPEC --out DIR``.

Quick start::

    from svfcheck.emergence import train_run
    r = train_run("induction-gpt2", "runs/induction")   # ~1.5 min CPU; resumable
    series = r.series()                                  # CheckpointSeries, steps 0..1000
    lm = series.load(1000)                               # via svfcheck.real.models.load_model
    from svfcheck.emergence import sad_over_training, default_settings
    e = sad_over_training(series, "runs/induction-sad", default_settings("induction"))
    e.contrast("overall")["passes"]                       # final vs step 0, both controls
"""

from .heads import HeadScores, head_scores
from .sweep import sweep
from .sad_sweep import EmergenceResult, EmergenceSettings, HeadSet, default_settings, identify_heads, sad_over_training
from .corpus import byte_tokenizer, char_tokenizer, load_corpus, unigram_entropy
from .series import Checkpoint, CheckpointSeries, parse_series, pythia_steps
from .tasks import InductionBatch, InductionTask, TextTask, evaluate_induction, induction_metrics
from .config import PRESETS, LMSpec, LMTrainConfig, preset
from .records import RunResult, load_run
from .train import train_run

__all__ = [
    "HeadScores",
    "head_scores",
    "sweep",
    "EmergenceResult",
    "EmergenceSettings",
    "HeadSet",
    "default_settings",
    "identify_heads",
    "sad_over_training",
    "Checkpoint",
    "CheckpointSeries",
    "parse_series",
    "pythia_steps",
    "InductionBatch",
    "InductionTask",
    "TextTask",
    "evaluate_induction",
    "induction_metrics",
    "byte_tokenizer",
    "char_tokenizer",
    "load_corpus",
    "unigram_entropy",
    "PRESETS",
    "LMSpec",
    "RunResult",
    "LMTrainConfig",
    "load_run",
    "preset",
    "train_run",
]
