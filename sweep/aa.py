"""The A/A check: one configuration compared with itself, through the table's tests.

Repetitions are batched (thousands per second on one core) so that a false-
positive rate near alpha can be measured to a fraction of a point; the table
itself is exercised end to end by ``bench/aa_check.py``.
"""
from __future__ import annotations

import numpy as np

from sweep import stats


def aa_false_positive_rate(probs, *, n_seeds: int = 3, n_reps: int = 200, alpha: float = 0.05,
                           n_boot: int = 1000, seed: int = 0, chunk: int = 500, seed_sd: float = 0.0,
                           holm_family: bool = True, seed_aware: bool = True) -> float:
    """Fraction of A/A repetitions in which the table would claim a difference.

    Args:
        probs: [n_shots, n] (or [n]) fixed per-query success probabilities of ONE
            configuration. Each repetition draws Bernoulli correctness for
            n_seeds seeds of "A" and n_seeds other seeds of "A'", runs the
            paired test per shot and on the shot mean, Holm-adjusts over those
            comparisons (as the comparison table does) and counts a false
            positive when any verdict is not 'no detectable difference'.
        seed_sd: training-seed spread: every seed's probabilities are shifted
            by its own N(0, seed_sd) (clipped to [0, 1]), so seeds of the same
            configuration differ in accuracy, not only in evaluation noise.
        holm_family: False tests only the shot-mean comparison, unadjusted
            (the per-test false-positive rate, which should be about alpha).
        seed_aware: False uses the sign-flip test alone (what the table did
            before seed variance entered its p-values), for comparison.
    The test is ``stats.combined_pvalues`` with the seed variance pooled over A and
    A' (as ``paired_test``); repetitions run ``chunk`` at a time, batched.
    """
    pr = stats._as_2d(probs)
    rng = np.random.default_rng(seed)
    hits = 0

    def seeds(r: int) -> np.ndarray:
        """[r, comparisons, n_seeds, n] correctness per shot (and the shot mean when > 1 shot)."""
        shift = rng.normal(0.0, seed_sd, size=(r, n_seeds, 1, 1)) if seed_sd > 0 else 0.0
        x = (rng.random((r, n_seeds) + pr.shape) < np.clip(pr + shift, 0.0, 1.0)).astype(float)
        if pr.shape[0] > 1:  # the shot mean is one more comparison of the family
            x = np.concatenate([x, x.mean(2, keepdims=True)], axis=2)
        x = x.swapaxes(1, 2)
        return x[:, -1:] if not holm_family else x

    for start in range(0, n_reps, chunk):
        r = min(chunk, n_reps - start)
        a, b = seeds(r), seeds(r)
        d = a.mean(2) - b.mean(2)                                     # [r, comparisons, n]
        if n_seeds > 1 and seed_aware:  # the seed variance pooled over A and A', as paired_test does
            c = (stats.seed_components(a) + stats.seed_components(b)) / 2
            seed_var = np.maximum(c, 0.0) * (2.0 / n_seeds)
        else:
            seed_var = np.zeros(d.shape[:2])
        p = stats.combined_pvalues(d.reshape(-1, d.shape[2]), seed_var.reshape(-1), 2 * (n_seeds - 1),
                                   n_boot=n_boot, seed=seed).reshape(r, -1)
        diff = d.mean(2)
        if not holm_family:
            hits += int(np.count_nonzero((p[:, 0] < alpha) & (diff[:, 0] != 0)))
            continue
        for i in range(r):
            hits += bool(np.any((stats.holm(p[i]) < alpha) & (diff[i] != 0)))
    return hits / n_reps
