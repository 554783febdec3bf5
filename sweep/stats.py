"""Noise statistics for comparing selectors on the same evaluation queries.

Everything works on per-query correctness arrays ``[seeds, n_queries]`` with
values in [0, 1] (exact expected accuracy or sampled 0/1), in numpy (scipy for
Student's t). The
numbers behind the defaults are in grpo-notes §4.2: at 200 queries a paired
comparison resolves about 4-6 points, so every difference in the comparison
table carries a paired test, a Holm correction and a minimum detectable effect.

The per-query sign-flip test conditions on the trained models: it asks whether
*these* seeds differ, and a seed that happens to train 1-2 points better is a
"difference" to it (A/A false positives of 9-21% at a seed spread of 1-2
points, 200 queries, 3 seeds; bench/aa_check.py, sweep/aa.py). Where a configuration has
several seeds, the reported p-value is therefore the larger of the sign-flip
p and a Welch-Satterthwaite t-test whose variance adds the between-seed
variance of the mean accuracy (``seed_variance``, pooled over the table's
configurations); a fixed checkpoint such as SFT contributes no seed variance.

Resampling draws are cached per (size, n_boot, seed), so every row of a table
is resampled with the same query draws (common random numbers: differences
between rows are not blurred by independent resampling noise, and a 500-trial
table costs one draw instead of thousands).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

import numpy as np

_NORMAL = NormalDist()
# Below this many Monte Carlo exceedances a sign-flip p-value is dominated by
# the 1/(n_boot+1) floor, too coarse for Holm over a table; use the normal
# approximation of the same randomisation distribution there instead.
_MIN_EXCEEDANCES = 10
# Up to this many non-zero differences the sign-flip distribution is enumerated.
_EXACT_MAX = 12
VERDICTS = ("better", "worse", "no detectable difference")


def se_binomial(p, n):
    """Standard error sqrt(p(1-p)/n) of an accuracy p measured on n queries (broadcasts)."""
    p = np.asarray(p, dtype=float)
    return np.sqrt(p * (1.0 - p) / np.asarray(n, dtype=float))


def _as_2d(values) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"expected correctness [seeds, n_queries], got shape {arr.shape}")
    return arr


@functools.lru_cache(maxsize=64)
def _query_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[n, n_boot] (times drawn)/n of each query in each bootstrap replicate."""
    rng = np.random.default_rng([seed, n, 0])
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)
    out = np.ascontiguousarray(counts.T / n)
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=64)
def _seed_counts(s: int, n_boot: int, seed: int, stream: int) -> np.ndarray:
    """[n_boot, s] how often each seed is drawn; a single seed is always itself."""
    if s == 1:
        out = np.ones((n_boot, 1))
    else:
        rng = np.random.default_rng([seed, s, 1 + stream])
        out = rng.multinomial(s, np.full(s, 1.0 / s), size=n_boot).astype(float)
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=64)
def _sign_flips(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n] random +-1 per query."""
    rng = np.random.default_rng([seed, n, 7])
    out = rng.integers(0, 2, size=(n_boot, n)).astype(float) * 2.0 - 1.0
    out.flags.writeable = False
    return out


def _rows_times(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """x [R, n] @ m [n, B]. A few rows go through gemv: OpenBLAS's threaded gemm
    costs ~25x more than the product itself on a small shared machine."""
    if x.shape[0] <= 8:
        return np.stack([row @ m for row in x]) if x.shape[0] else np.zeros((0, m.shape[1]))
    return x @ m


def bootstrap_replicates(arrays: Sequence, *, n_boot: int = 2000, seed: int = 0,
                         streams: Sequence[int] | None = None) -> np.ndarray:
    """[K, n_boot] two-level bootstrap replicates of the mean of each of K arrays [S_k, n].

    Every array is resampled with the SAME query draws (queries are shared, so
    replicate differences between arrays are paired); seeds are drawn per
    array from the seed-draw stream ``streams[k]`` (default 0): give the two
    sides of a comparison different streams so their seeds resample
    independently. One matrix product for all arrays.
    """
    mats = [_as_2d(a) for a in arrays]
    if not mats:
        return np.zeros((0, n_boot))
    n = mats[0].shape[1]
    if any(m.shape[1] != n for m in mats):
        raise ValueError("bootstrap_replicates: every array must cover the same queries")
    per_seed = _rows_times(np.vstack(mats), _query_weights(n, n_boot, seed))   # [sum S_k, B]
    out = np.empty((len(mats), n_boot))
    start = 0
    for k, m in enumerate(mats):
        s = m.shape[0]
        draws = _seed_counts(s, n_boot, seed, streams[k] if streams is not None else 0)   # [B, S]
        out[k] = np.einsum("bs,sb->b", draws, per_seed[start:start + s]) / s
        start += s
    return out


def bootstrap_ci(values, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile CI of the mean accuracy of ``values`` [seeds, n_queries] (or [n_queries]).

    Two-level scheme: each replicate draws n queries with replacement (one draw
    shared by all seeds, because every seed is evaluated on the same queries)
    and, independently, S seeds with replacement, and averages the drawn
    seed x query cells. With one seed this is the ordinary query bootstrap;
    with few seeds the seed level underestimates seed variance by (S-1)/S.
    """
    reps = bootstrap_replicates([values], n_boot=n_boot, seed=seed)[0]
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


@dataclass(frozen=True)
class PairedResult:
    diff: float          # mean(a) - mean(b), accuracy units
    ci_low: float        # paired two-level bootstrap percentile 95% CI of diff
    ci_high: float
    p_value: float       # two-sided sign-flip randomisation test
    discordance: float   # mean squared per-query difference (= discordant fraction for 0/1)


def sign_flip_pvalues(diffs, *, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """Two-sided paired sign-flip p-values, one per row of ``diffs`` [T, n] (or [n]).

    Under H0 (a and b exchangeable on each query) every per-query difference d_q
    is symmetric about 0, so |sum_q s_q d_q| over random signs s is the null
    distribution of |sum d|. Rows with <= 12 non-zero d are enumerated exactly;
    others use Monte Carlo, p = (1 + #exceed) / (1 + n_boot) (a valid p-value),
    except in the far tail (< 10 exceedances), where that estimate is floored
    by 1/(n_boot+1) and the normal approximation N(0, sum d^2) of the same
    distribution is used (for 0/1 data: McNemar's z). All-zero rows give p = 1.
    """
    d = np.asarray(diffs, dtype=float)
    d = d[None, :] if d.ndim == 1 else d
    d = np.where(np.abs(d) > 1e-12, d, 0.0)
    m = np.count_nonzero(d, axis=1)
    t_obs = np.abs(d.sum(1))
    tol = 1e-9 * np.maximum(1.0, t_obs)
    p = np.ones(d.shape[0])
    for i in np.flatnonzero((m > 0) & (m <= _EXACT_MAX)):
        nz = d[i][d[i] != 0]
        signs = ((np.arange(2 ** nz.size)[:, None] >> np.arange(nz.size)) & 1) * 2.0 - 1.0
        p[i] = np.mean(np.abs(signs @ nz) >= t_obs[i] - tol[i])
    big = np.flatnonzero(m > _EXACT_MAX)
    if big.size:
        t_null = np.abs(_rows_times(d[big], _sign_flips(d.shape[1], n_boot, seed).T))   # [Tb, B]
        exceed = np.count_nonzero(t_null >= (t_obs[big] - tol[big])[:, None], axis=1)
        z = t_obs[big] / np.sqrt(np.sum(d[big] ** 2, axis=1))
        normal = np.array([math.erfc(x / math.sqrt(2.0)) for x in z])
        p[big] = np.where(exceed >= _MIN_EXCEEDANCES, (exceed + 1) / (n_boot + 1), normal)
    return p


def paired_test(a, b, *, n_boot: int = 2000, seed: int = 0) -> PairedResult:
    """Paired comparison of two selectors on the SAME queries (same order).

    Args:
        a: [seeds_a, n] correctness of selector a (or [n] for one seed).
        b: [seeds_b, n] correctness of selector b.
    The per-query difference is d_q = mean_seeds(a)_q - mean_seeds(b)_q. The CI
    resamples queries jointly for a and b (pairing) and the seeds of each side
    independently. The p-value is ``sign_flip_pvalues`` of d, or, when a side
    has >= 2 seeds, ``combined_pvalues`` with the seed variance pooled over the
    two sides (a single-seed side is taken as the fixed checkpoint it is).
    """
    a2, b2 = _as_2d(a), _as_2d(b)
    if a2.shape[1] != b2.shape[1]:
        raise ValueError(f"paired_test needs the same queries: {a2.shape[1]} vs {b2.shape[1]}")
    d = a2.mean(0) - b2.mean(0)
    reps = bootstrap_replicates([a2, b2], n_boot=n_boot, seed=seed, streams=(0, 1))
    lo, hi = np.quantile(reps[0] - reps[1], [0.025, 0.975])
    sigma2, df = seed_variance([x for x in (a2, b2) if x.shape[0] > 1])
    weight = sum(1.0 / x.shape[0] for x in (a2, b2) if x.shape[0] > 1)
    p = combined_pvalues(d[None], np.array([sigma2 * weight]), df, n_boot=n_boot, seed=seed)[0]
    return PairedResult(diff=float(d.mean()), ci_low=float(lo), ci_high=float(hi), p_value=float(p),
                        discordance=float(np.mean(d * d)))


def seed_components(x: np.ndarray) -> np.ndarray:
    """Unbiased between-seed variance of per-seed mean accuracy beyond query-level noise.

    x: [..., S, n], S >= 2. Per-seed means m_s have Var = s2_seed + s2_eps / n,
    where s2_eps is the seed x query residual variance (two-way ANOVA mean
    square); returns var(m_s) - s2_eps_hat / n, [...] (may be negative).
    """
    s, n = x.shape[-2], x.shape[-1]
    m = x.mean(-1)
    resid = x - x.mean(-2, keepdims=True) - m[..., None] + m.mean(-1)[..., None, None]
    eps = np.einsum("...sq,...sq->...", resid, resid) / ((s - 1) * (n - 1))
    return m.var(-1, ddof=1) - eps / n


def seed_variance(arrays: Sequence) -> tuple[float, int]:
    """(sigma2, df): between-seed variance of a configuration's mean accuracy, pooled.

    ``arrays``: [S_k, n] correctness of configurations with S_k >= 2 seeds
    (others are ignored). Pooling assumes one seed variance for the whole
    study (same training recipe); the unbiased per-configuration estimates are
    averaged with weights S_k - 1 and clipped at 0 once. df = sum(S_k - 1).
    """
    parts = [(seed_components(_as_2d(a)), _as_2d(a).shape[0] - 1) for a in arrays if _as_2d(a).shape[0] > 1]
    df = sum(k for _, k in parts)
    if not df:
        return 0.0, 0
    return max(0.0, float(sum(c * k for c, k in parts) / df)), df


def combined_pvalues(diffs, seed_var, df_seed, *, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """Two-sided p-values valid under query AND seed variance: [T].

    Args:
        diffs: [T, n] per-query differences d (as ``sign_flip_pvalues``).
        seed_var: [T] variance the seeds add to mean(d): sigma2 * (1/S_a + 1/S_b)
            over the sides that are seeded configurations; 0 -> sign-flip only.
        df_seed: degrees of freedom of sigma2 (``seed_variance``), scalar or [T].
    Where seed_var > 0: max(sign-flip p, Welch-Satterthwaite t p) with
    t = mean(d) / sqrt(var(d)/n + seed_var) and df = V^2 / (v_q^2/(n-1) +
    seed_var^2/df_seed). The max of two p-values is valid when either is.
    """
    from scipy.stats import t as student_t  # scipy: already a dependency (Optuna's QMC sampler)

    d = np.asarray(diffs, dtype=float)
    d = d[None, :] if d.ndim == 1 else d
    p = sign_flip_pvalues(d, n_boot=n_boot, seed=seed)
    vs = np.broadcast_to(np.asarray(seed_var, dtype=float), p.shape)
    dfs = np.broadcast_to(np.asarray(df_seed, dtype=float), p.shape)
    use = (vs > 0) & (dfs >= 1)
    if not use.any():
        return p
    n = d.shape[1]
    vq = d[use].var(1, ddof=1) / n
    total = vq + vs[use]
    df = total ** 2 / (vq ** 2 / (n - 1) + vs[use] ** 2 / dfs[use])
    p_t = 2.0 * student_t.sf(np.abs(d[use].mean(1)) / np.sqrt(total), df)
    p[use] = np.maximum(p[use], p_t)
    return p


def holm(p_values) -> np.ndarray:
    """Holm step-down adjusted p-values; NaN entries stay NaN and are not counted.

    Sorted ascending p_(1..m): adj_(i) = max_{j<=i} min(1, (m - j + 1) p_(j)).
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def verdict(adjusted_p: float, diff: float, alpha: float = 0.05) -> str:
    """'better' / 'worse' when the adjusted p is below alpha, else 'no detectable difference'."""
    if adjusted_p is None or math.isnan(adjusted_p) or adjusted_p >= alpha or diff == 0:
        return VERDICTS[2]
    return VERDICTS[0] if diff > 0 else VERDICTS[1]


def _z_sum(alpha: float, power: float) -> float:
    return _NORMAL.inv_cdf(1 - alpha / 2) + _NORMAL.inv_cdf(power)


def min_detectable_effect(n: int, discordance: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Paired MDE (accuracy units): (z_{1-alpha/2} + z_{power}) * sqrt(d / n).

    d is the discordant fraction (``PairedResult.discordance``); SE_diff =
    sqrt(d/n) is McNemar's. n=200, d=0.10 -> 0.063 (grpo-notes §4.2).
    """
    return _z_sum(alpha, power) * math.sqrt(discordance / n)


def min_detectable_effect_unpaired(n: int, p: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Unpaired MDE (accuracy units): (z_{1-alpha/2} + z_{power}) * sqrt(2 p (1-p) / n).

    Two independent accuracies near p on n queries each; n=200, p=0.55 -> 0.139.
    """
    return _z_sum(alpha, power) * math.sqrt(2.0 * p * (1.0 - p) / n)


def selection_drift(sel_a: Sequence, sel_b: Sequence) -> float:
    """Fraction of queries whose ordered selection differs between a and b.

    ``sel_a``/``sel_b``: [n_queries] sequences of global ids, same query order.
    0 means the selections are identical, so their accuracy is too.
    """
    if len(sel_a) != len(sel_b):
        raise ValueError(f"selection_drift needs the same queries: {len(sel_a)} vs {len(sel_b)}")
    if not len(sel_a):
        return 0.0
    try:
        xa, xb = np.asarray(sel_a), np.asarray(sel_b)
        if xa.shape == xb.shape and xa.ndim == 2 and xa.dtype != object:
            return float(np.mean(np.any(xa != xb, axis=1)))
    except ValueError:  # ragged lists: fall back to the per-query loop
        pass
    return sum(list(x) != list(y) for x, y in zip(sel_a, sel_b)) / len(sel_a)
