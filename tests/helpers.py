"""Shared test helpers (importable as tests.helpers; pytest's pythonpath holds the repo root)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pcpo_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pcpo.cli", *args]


# ---------------------------------------------------------------------------
# Tolerances derived from what is compared (AMD and Intel CPUs, thread counts, batch shapes and
# process counts change the order of float32 reductions, so no comparison of two such runs may
# rely on a constant tuned on one machine)
# ---------------------------------------------------------------------------

#: float32 unit roundoff u = 2^-24 (half of torch.finfo(torch.float32).eps)
F32_U = 2.0 ** -24


def reordered_sum_tol(n_terms: int, scale: float = 1.0) -> float:
    """Bound on the difference of two float32 evaluations of the same sum taken in different orders:
    each is within ``(n - 1) u sum|x_i|`` of the exact sum (Higham, Accuracy and Stability of
    Numerical Algorithms, 2nd ed., §4.2), so they differ by at most ``2 (n - 1) u sum|x_i|``.
    ``scale`` stands for ``sum|x_i|``; with ``scale=1`` it is a relative tolerance for a sum of terms
    of one sign (a squared norm, a mean of positive values)."""
    return 2 * max(n_terms - 1, 1) * F32_U * scale


def adam_step_atol(lr: float, steps: int, fraction: float = 0.1) -> float:
    """Tolerance for the same weights after ``steps`` Adam(W) steps in two runs whose gradients agree
    up to float32 reduction order.

    Adam moves a weight by ``lr * m / (sqrt(v) + eps)``, at most about ``lr`` per step whatever the
    gradient's size: at the first step exactly ``lr * g / (|g| + eps)``.  A rounding difference in
    ``g`` therefore changes that move only where ``|g|`` is within rounding of zero on Adam's
    ``eps`` scale, and there by a fraction of ``lr``; a real difference in the gradient (another
    batch, a missing sample, a flipped advantage) flips the signs of many elements and moves them
    by up to ``2 lr`` per step.  A tenth of ``lr`` per step separates the two with a wide margin on
    both sides (the largest rounding move seen, on an AMD EPYC, was 0.44% of lr).  Gradient
    *magnitudes*, to which Adam's first step is blind, are compared separately through the logged
    gradient norm (:func:`reordered_sum_tol`)."""
    return fraction * lr * steps
