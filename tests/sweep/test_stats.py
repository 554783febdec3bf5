"""Noise statistics on hand-computed cases and the grpo-notes §4.2 tables."""
import math

import numpy as np
import pytest

from sweep import aa, stats


def test_se_binomial_matches_the_notes_table():
    # grpo-notes §4.2: SE in points at n=200 is 3.54 (p=.5) and 3.37 (p=.65); n=1000, p=.55 -> 1.57
    got = 100 * stats.se_binomial(np.array([0.5, 0.65, 0.55]), np.array([200, 200, 1000]))
    np.testing.assert_allclose(got, [3.54, 3.37, 1.57], atol=0.006)


@pytest.mark.parametrize("n, d, points", [(200, 0.10, 6.3), (100, 0.05, 6.3), (400, 0.20, 6.3),
                                          (1000, 0.30, 4.8), (200, 0.05, 4.4), (100, 0.30, 15.3)])
def test_paired_mde_matches_the_notes_table(n, d, points):
    # (1.96 + 0.8416) * sqrt(d / n): n=200, d=0.10 -> 2.8016 * 0.02236 = 0.0626; the notes
    # round the multiplier to 2.8, hence the 0.1-point tolerance
    assert 100 * stats.min_detectable_effect(n, d) == pytest.approx(points, abs=0.1)


@pytest.mark.parametrize("n, points", [(100, 19.7), (200, 13.9), (400, 9.8), (1000, 6.2)])
def test_unpaired_mde_matches_the_notes_table(n, points):
    # (1.96 + 0.8416) * sqrt(2 * 0.55 * 0.45 / n)
    assert 100 * stats.min_detectable_effect_unpaired(n, 0.55) == pytest.approx(points, abs=0.1)


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 (m=4, NaN not counted): x4, x3, x2, x1 = .02, .03, .06, .04
    # then the running max makes the last .06
    got = stats.holm([0.01, 0.04, 0.03, np.nan, 0.005])
    np.testing.assert_allclose(got, [0.03, 0.06, 0.06, np.nan, 0.02])
    assert stats.holm([0.2, 0.9]).tolist() == [0.4, 0.9]
    assert stats.holm([0.6, 0.7]).tolist() == [1.0, 1.0]  # capped at 1


def test_verdict():
    assert stats.verdict(0.01, 0.05) == "better"
    assert stats.verdict(0.01, -0.05) == "worse"
    assert stats.verdict(0.05, 0.30) == "no detectable difference"  # alpha is strict
    assert stats.verdict(float("nan"), 0.3) == "no detectable difference"


def test_identical_correctness_gives_p_one():
    a = np.random.default_rng(0).random((3, 50))
    res = stats.paired_test(a[:1], a[:1].copy())
    assert (res.diff, res.p_value, res.discordance, res.ci_low, res.ci_high) == (0, 1, 0, 0, 0)
    # with 3 seeds per side the seeds are resampled independently: the interval opens around 0
    res = stats.paired_test(a, a.copy())
    assert (res.diff, res.p_value) == (0.0, 1.0)
    assert res.ci_low < 0 < res.ci_high


def test_exact_sign_flip_small_case():
    # 3 queries better by 1, the rest tied: of the 2^3 sign patterns only +++ and --- reach |sum| = 3
    a, b = np.zeros(40), np.zeros(40)
    a[:3] = 1
    assert stats.paired_test(a, b).p_value == pytest.approx(2 / 8)
    # 10 discordant all in one direction: 2 / 2^10
    a[:10] = 1
    assert stats.paired_test(a, b).p_value == pytest.approx(2 / 1024)


def test_monte_carlo_sign_flip_matches_exact_mcnemar():
    # 20 queries a-only, 12 b-only: the sign-flip null is 2*Binom(32, .5) - 32, so the exact
    # two-sided p is 2 * P(X <= 12) = 0.2153
    a, b = np.zeros(200), np.zeros(200)
    a[:20] = 1
    b[20:32] = 1
    exact = 2 * sum(math.comb(32, k) for k in range(13)) / 2 ** 32
    assert stats.paired_test(a, b, n_boot=4000).p_value == pytest.approx(exact, abs=0.02)


def test_far_tail_uses_mcnemar_z():
    # 30 vs 5 discordant: z = 25 / sqrt(35) = 4.226, p = erfc(z / sqrt 2) = 2.4e-5 (MC floor is 5e-4)
    a, b = np.zeros(200), np.zeros(200)
    a[:30] = 1
    b[30:35] = 1
    res = stats.paired_test(a, b)
    assert res.p_value == pytest.approx(math.erfc(25 / math.sqrt(35) / math.sqrt(2)), rel=1e-6)
    assert res.discordance == pytest.approx(35 / 200)
    assert res.ci_low < 25 / 200 < res.ci_high and res.ci_low > 0


def test_sign_flip_pvalues_batch_equals_one_by_one():
    rng = np.random.default_rng(3)
    d = (rng.random((6, 120)) < 0.55).astype(float) - (rng.random((6, 120)) < 0.5)
    d[2] = 0
    d[3, 5:] = 0  # 5 non-zero -> exact branch
    batch = stats.sign_flip_pvalues(d)
    single = [stats.sign_flip_pvalues(row)[0] for row in d]
    np.testing.assert_allclose(batch, single)
    assert batch[2] == 1.0


def test_bootstrap_replicates_equal_a_plain_loop():
    rng = np.random.default_rng(1)
    arrays = [rng.random((3, 30)), rng.random((1, 30))]
    reps = stats.bootstrap_replicates(arrays, n_boot=50, seed=4, streams=(0, 1))
    q = stats._query_weights(30, 50, 4) * 30  # [n, B] times each query is drawn
    for k, (arr, stream) in enumerate(zip(arrays, (0, 1))):
        s = stats._seed_counts(arr.shape[0], 50, 4, stream)
        for b in range(50):
            want = sum(s[b, i] * q[j, b] * arr[i, j] for i in range(arr.shape[0]) for j in range(30))
            assert reps[k, b] == pytest.approx(want / (arr.shape[0] * 30))


def test_bootstrap_ci_width_and_seed_level():
    # one seed of 0/1 at p = .5, n = 400: half-width ~ 1.96 * 0.025 = 0.049
    rng = np.random.default_rng(2)
    one = (rng.random(400) < 0.5).astype(float)
    lo, hi = stats.bootstrap_ci(one)
    assert lo < one.mean() < hi
    assert (hi - lo) / 2 == pytest.approx(0.049, abs=0.006)
    # seeds that disagree by +-0.2 widen the two-level interval (seed sd of the mean ~0.09 on
    # top of the query level's ~0.013); identical seeds leave the query-level width
    same = np.vstack([one, one, one]) * 0.5 + 0.25
    shifted = same + np.array([[-0.2], [0.0], [0.2]])
    w_same = np.subtract(*stats.bootstrap_ci(same)[::-1])
    w_shift = np.subtract(*stats.bootstrap_ci(shifted)[::-1])
    assert w_same == pytest.approx((hi - lo) / 2)
    assert w_shift > 4 * w_same


def test_selection_drift():
    a = [[1, 2], [3, 4], [5, 6], [7, 8]]
    assert stats.selection_drift(a, a) == 0.0
    assert stats.selection_drift(a, [[1, 2], [4, 3], [5, 6], [7, 9]]) == 0.5  # order matters
    assert stats.selection_drift([[1], [2, 3]], [[1], [2]]) == 0.5          # ragged lists work
    assert stats.selection_drift(np.array(a), np.array(a)[::-1]) == 1.0
    with pytest.raises(ValueError):
        stats.selection_drift(a, a[:2])


def test_aa_check_says_no_difference_at_least_95_percent():
    # one configuration, 4 shots x 200 queries with fixed per-query success probabilities;
    # 3 seeds vs 3 other seeds, tested per shot and on the mean, Holm over the 5 (as the table does)
    probs = np.random.default_rng(0).beta(2, 2, size=(4, 200))
    rate = aa.aa_false_positive_rate(probs, n_seeds=3, n_reps=4000, seed=0)
    single = aa.aa_false_positive_rate(probs[0], n_seeds=3, n_reps=4000, seed=1)
    print(f"A/A: 'no detectable difference' in {1 - rate:.3f} of table-style repetitions; "
          f"single-comparison false-positive rate {single:.3f} (alpha 0.05)")
    assert 1 - rate >= 0.95
    # the single test is valid (<= alpha up to Monte Carlo error) yet not vacuous (a p-value of
    # 1 everywhere would pass the line above)
    assert 0.02 < single < 0.05 + 3 * math.sqrt(0.05 * 0.95 / 4000)


def test_a_real_difference_is_detected():
    # per-query success +0.15 on 200 queries, 3 seeds each: far above the ~5-point paired MDE
    rng = np.random.default_rng(5)
    p = rng.uniform(0.2, 0.7, 200)
    a = (rng.random((3, 200)) < p + 0.15).astype(float)
    b = (rng.random((3, 200)) < p).astype(float)
    res = stats.paired_test(a, b)
    assert res.p_value < 1e-4 and res.ci_low > 0.05
    assert stats.verdict(res.p_value, res.diff) == "better"


def test_seed_variance_recovers_a_known_seed_spread():
    # 30 configurations x 3 seeds x 200 queries: query effect + seed shift (sd 2 points) + noise (sd 0.2)
    rng = np.random.default_rng(7)
    alpha = rng.uniform(0.3, 0.7, 200)

    def configs(seed_sd):
        return [alpha + rng.normal(0, seed_sd, (3, 1)) + rng.normal(0, 0.2, (3, 200)) for _ in range(30)]

    sigma2, df = stats.seed_variance(configs(0.02))
    assert df == 60
    # the per-seed mean also carries noise 0.2^2/200 = 2e-4 (as much as the seed variance): it is removed
    assert sigma2 == pytest.approx(0.02 ** 2, rel=0.4)
    assert stats.seed_variance(configs(0.0))[0] < 1e-4
    assert stats.seed_variance([alpha[None]]) == (0.0, 0)      # one seed: nothing to estimate


def test_combined_pvalues_add_the_seed_variance_to_the_sign_flip_test():
    from scipy.stats import t as student_t

    rng = np.random.default_rng(8)
    d = (rng.random((3, 200)) < 0.55).astype(float) - (rng.random((3, 200)) < 0.5)
    np.testing.assert_allclose(stats.combined_pvalues(d, 0.0, 4), stats.sign_flip_pvalues(d))
    got = stats.combined_pvalues(d, np.array([0.0, 1e-4, 1e-3]), 4)
    vq = d[2].var(ddof=1) / 200
    df = (vq + 1e-3) ** 2 / (vq ** 2 / 199 + 1e-3 ** 2 / 4)
    want = 2 * student_t.sf(abs(d[2].mean()) / np.sqrt(vq + 1e-3), df)
    assert got[2] == pytest.approx(max(want, stats.sign_flip_pvalues(d[2])[0]))
    same_row = stats.combined_pvalues(np.vstack([d[2]] * 3), np.array([0.0, 1e-3, 3e-3]), 4)
    assert same_row[0] < same_row[1] < same_row[2]                  # more seed variance, weaker evidence


def test_aa_with_a_seed_spread_needs_the_seed_variance():
    # seeds of one configuration differing by 2 points (sd): the query-level test alone calls a
    # difference in about a fifth of A/A comparisons; with the seed variance it stays near alpha
    probs = np.random.default_rng(0).beta(2, 2, size=(4, 200))
    kw = dict(n_seeds=3, n_reps=3000, seed_sd=0.02, holm_family=False)
    query_only = aa.aa_false_positive_rate(probs, seed=3, seed_aware=False, **kw)
    combined = aa.aa_false_positive_rate(probs, seed=3, **kw)
    print(f"A/A at seed sd 2 points: per-test false positives {query_only:.3f} (sign-flip) -> {combined:.3f}")
    assert query_only > 0.15
    assert combined < 0.10
