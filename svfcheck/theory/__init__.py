"""The paper's theory (App. B, docs/math.md §2) as small numerical building blocks.

- :mod:`.dictionaries` — unit-norm feature dictionaries, frame operator, isotropy, samplers.
- :mod:`.sampling` — Bernoulli token sampling, exact / Monte Carlo second moments, Lemma 3.
- :mod:`.objectives` — softmax, CE/H/KL, teacher matrix, Theorem 1 closed form, ``J(M)``.
- :mod:`.student` — a float64 trainer minimizing ``J(M)`` (Newton / L-BFGS).
- :mod:`.bounds` — Theorem 2 bounds, angles, anti-whitening.
- :mod:`.orthogonalization` — Theorem 3 objective and a sphere optimizer.
- :mod:`.summary` — :func:`theory_summary` for reports.
"""

from .bounds import anti_whiten, delta_bound, sin_angle, theorem2_bounds, theorem2_observed
from .dictionaries import (
    anisotropic,
    antipodal_frame,
    check_dictionary,
    frame_operator,
    harmonic_frame,
    isotropy,
    near_isotropic,
    random_dictionary,
    tight_frame,
    union_of_orthonormal_bases,
    whitened_detectors,
)
from .objectives import teacher_matrix, theorem1_minimizer
from .student import train_student

__all__ = [
    "anisotropic",
    "anti_whiten",
    "antipodal_frame",
    "check_dictionary",
    "delta_bound",
    "frame_operator",
    "harmonic_frame",
    "isotropy",
    "near_isotropic",
    "random_dictionary",
    "sin_angle",
    "teacher_matrix",
    "theorem1_minimizer",
    "theorem2_bounds",
    "theorem2_observed",
    "tight_frame",
    "train_student",
    "union_of_orthonormal_bases",
    "whitened_detectors",
]
