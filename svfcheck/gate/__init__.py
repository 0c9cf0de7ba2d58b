"""CI gating of model analyses.

An *analysis spec* (TOML, :mod:`svfcheck.gate.spec`) names a model, a prompt task, a pair
selection, a seeded random-init baseline and pass conditions; :mod:`svfcheck.gate.evaluate`
runs the SAD pipeline once per model and baseline and judges each condition (SAD conditions
must discriminate trained weights from random initialisation); ``svfcheck gate SPEC...``
(:mod:`svfcheck.gate.cli`) prints a summary table and exits 0/1/2; the pytest plugin
(:mod:`svfcheck.gate.pytest_plugin`, ``pytest --svf-spec analyses/``) runs one test per
(spec, condition). Shipped specs and the file format: ``analyses/README.md``.

Only the standard-library spec parser is imported here; torch loads on evaluation.
"""

from .spec import SpecError, load_spec, spec_files

__all__ = ["SpecError", "load_spec", "spec_files"]
