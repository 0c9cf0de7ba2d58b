"""Property-based checks of the paper's theory (docs/math.md §2); run with ``pytest -m theory``.

- ``test_lemmas.py`` — Lemma 1 (softmax shift invariance, both directions), Lemma 2.
- ``test_lemma3.py`` — Lemma 3 by exact enumeration (n ≤ 5) and Monte Carlo (n ≤ 40).
- ``test_dictionaries.py`` — the samplers: tight frames, exact-ε near-isotropic, condition.
- ``test_theorem1.py`` — Theorem 1 against a trained student (sampled and exact population
  objective), the closed form, Corollary 1 on tight frames, the objective's derivatives.
- ``test_theorem2.py`` — both Theorem 2 bounds, tightness recorded (terminal summary),
  anti-whitening, the Neumann step.
- ``test_theorem3.py`` — orthogonalization: multi-start sphere optimization, finite-λ bound.
- ``test_suite_teeth.py`` — negative controls: wrong claims must be caught.

Strategies live in ``hypothesis_helpers.py``; numpy-only references in ``checks.py``.
"""
