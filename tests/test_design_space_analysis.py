"""Error EDFs, complexity-matched weights and the empirical bootstrap on populations with known
answers."""
import math

import numpy as np
import pytest

from regnet_ext.design_space import (empirical_bootstrap, error_edf, matched_weights,
                                     model_parameters, summarize)


def _edf_brute_force(errors, weights, e):
    return sum(w for x, w in zip(errors, weights) if x < e) / sum(weights)


def test_edf_matches_its_definition_on_random_populations():
    rng = np.random.default_rng(0)
    errors = np.round(rng.uniform(20, 60, size=200), 1)  # rounding makes ties
    weights = rng.uniform(0.1, 2.0, size=200)
    at = np.r_[rng.uniform(15, 65, size=50), errors[:20]]  # on the steps too (strict <)
    for w in (None, weights):
        ref_w = np.ones(200) if w is None else w
        got = error_edf(errors, w, at=at)
        ref = [_edf_brute_force(errors, ref_w, e) for e in at]
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    x, f = error_edf(errors)
    assert np.all(np.diff(x) > 0) and f[-1] == pytest.approx(1.0)
    for xi, fi in zip(x, f):  # the step form holds F just right of each step (<=)
        assert fi == pytest.approx(np.mean(errors <= xi))


def test_edf_of_uniform_errors_is_the_uniform_cdf():
    errors = np.linspace(0, 100, 10001)
    # 0, 0.01, ..., 25.00 lie below 25.005: 2501 of the 10001 models.
    np.testing.assert_allclose(error_edf(errors, at=[25.005, 50.005, 90.005]),
                               np.array([2501, 5001, 9001]) / 10001, atol=1e-12)


def test_edf_rejects_bad_input():
    with pytest.raises(ValueError, match="errors"):
        error_edf([])
    with pytest.raises(ValueError, match="weights"):
        error_edf([1.0, 2.0], weights=[1.0])
    with pytest.raises(ValueError, match="weights"):
        error_edf([1.0, 2.0], weights=[-1.0, 2.0])


def test_matched_weights_equalise_complexity_distributions():
    # Error depends on complexity only, so unweighted EDFs of two populations differ only because
    # their flops are distributed differently; matched weights make them agree exactly.
    rng = np.random.default_rng(1)
    edges = np.geomspace(100e6, 800e6, 6)

    def population(n, skew):
        bins = rng.choice(5, size=n, p=skew)
        flops = np.exp(rng.uniform(np.log(edges[bins]), np.log(edges[bins + 1])))
        flops = np.clip(flops, edges[0] * 1.0001, edges[-1] * 0.9999)
        return flops, 50.0 - 5.0 * bins  # bigger models are better, constant per bin

    fa, ea = population(400, [0.6, 0.2, 0.1, 0.05, 0.05])
    fb, eb = population(300, [0.05, 0.05, 0.1, 0.2, 0.6])
    # Pin the shared range to the bin edges so the weight bins are these very bins.
    fa[:2], fb[:2] = edges[0], edges[-1]
    fa[2:4], fb[2:4] = edges[-1], edges[0]
    ea[:2], eb[:2] = 50.0, 30.0
    ea[2:4], eb[2:4] = 30.0, 50.0
    wa, wb = matched_weights([fa, fb], bins=5)
    assert wa.sum() == pytest.approx(1) and wb.sum() == pytest.approx(1)
    grid = [31, 36, 41, 46, 51]
    assert np.max(np.abs(error_edf(ea, at=grid) - error_edf(eb, at=grid))) > 0.3
    np.testing.assert_allclose(error_edf(ea, wa, at=grid), error_edf(eb, wb, at=grid), atol=1e-12)
    # Each bin carries 1/5 of the weight in both populations.
    for w, f in ((wa, fa), (wb, fb)):
        hist = np.histogram(f, bins=edges, weights=w)[0]
        np.testing.assert_allclose(hist, 0.2, atol=1e-12)


def test_matched_weights_reject_disjoint_ranges():
    with pytest.raises(ValueError, match="overlap"):
        matched_weights([[1e6, 2e6], [3e6, 4e6]])


def _exact_best_rank_quantile(n, m, p):
    """Errors increase with the value, so the best of m draws (with replacement) is the smallest
    drawn value: P(best rank >= k) = ((n - k + 1) / n)^m for 1-based k. The p-quantile (numpy's
    'lower'/'higher' bracket) of the best rank, returned as a 1-based rank range."""
    cdf = 1 - ((n - np.arange(1, n + 1)) / n) ** m  # P(best rank <= k)
    return int(np.searchsorted(cdf, p) + 1)


def test_bootstrap_matches_the_exact_distribution_of_the_best_value():
    rng = np.random.default_rng(2)
    n = 200
    values = np.sort(rng.uniform(0, 10, size=n))
    errors = 20 + 3 * values  # strictly increasing in the value (values are distinct, sorted)
    r = empirical_bootstrap(values, errors, fraction=0.25, repetitions=20000, seed=0)
    m = 50
    assert r.sample_size == m and r.repetitions == 20000 and r.confidence == 0.95
    for got, p in ((r.low, 0.025), (r.median, 0.5), (r.high, 0.975)):
        k = _exact_best_rank_quantile(n, m, p)
        # Sampling noise of 20000 repetitions moves a quantile by at most a rank or two here.
        assert values[max(k - 3, 0)] <= got <= values[min(k + 1, n - 1)], (p, got, k)


def test_bootstrap_finds_where_the_good_models_lie():
    rng = np.random.default_rng(3)
    values = rng.uniform(1.5, 3.0, size=500)  # e.g. wm
    errors = 40 + 30 * (values - 2.5) ** 2 + rng.normal(0, 0.3, size=500)
    r = empirical_bootstrap(values, errors)
    assert r.low < 2.5 < r.high and r.high - r.low < 0.5
    assert r.sample_size == 125 and r.repetitions == 10_000  # the paper's defaults
    again = empirical_bootstrap(values, errors)
    assert again == r  # reproducible from the seed


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="values, errors"):
        empirical_bootstrap([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="fraction"):
        empirical_bootstrap([1, 2], [1, 2], fraction=0)
    with pytest.raises(ValueError, match="confidence"):
        empirical_bootstrap([1, 2], [1, 2], confidence=1.5)


def test_parameters_and_summary_of_records():
    records = [
        {"space": "regnetx", "trial": 0, "top1_error": 30.0, "flops": 4e8, "params": 5e6,
         "acts": 3e6, "config": {"depth": 16, "w0": 48, "wa": 30.5, "wm": 2.4, "group_width": 16,
                                 "bottleneck_ratio": 1},
         "spec": {"depths": [1, 2, 6, 7], "widths": [48, 112, 256, 608]}},
        {"space": "anynetx_a", "trial": 0, "top1_error": 35.0, "flops": 3.8e8, "params": 4e6,
         "acts": 3e6, "config": {"depths": [1, 2, 3, 4], "widths": [8, 16, 24, 32],
                                 "bottleneck_ratios": [1, 2, 4, 1], "group_widths": [1, 2, 4, 8]},
         "spec": {"depths": [1, 2, 3, 4], "widths": [8, 16, 24, 32]}},
        {"space": "regnetx", "trial": 1, "top1_error": 28.0, "flops": 3.9e8, "params": 5e6,
         "acts": 3e6, "config": {"depth": 20, "w0": 24, "wa": 36.0, "wm": 2.5, "group_width": 8,
                                 "bottleneck_ratio": 1},
         "spec": {"depths": [1, 3, 7, 9], "widths": [24, 64, 152, 368]}},
    ]
    p = model_parameters(records[1])
    assert p["w3"] == 24 and p["b3"] == 4 and p["g4"] == 8 and p["total_depth"] == 10
    assert model_parameters(records[0])["wm"] == 2.4
    s = summarize(records)
    assert s["regnetx"]["n"] == 2 and s["regnetx"]["min_error"] == 28.0
    assert s["regnetx"]["best_trial"] == 1 and math.isclose(s["regnetx"]["mean_error"], 29.0)


def test_anynet_parameters_are_the_built_widths_and_group_widths():
    # The compatibility step changes some sampled widths and group widths: the bootstrap and the
    # trend plots take the trained (built) model's, which the records' spec holds.
    from regnet_ext import design_space as ds

    samples = ds.sample("anynetx_a", 40, flops=(150e6, 600e6), seed=1)
    changed = [s for s in samples if list(s.spec.widths) != s.config["widths"]
               or list(s.spec.group_widths) != s.config["group_widths"]]
    assert changed  # else this test would check nothing
    for s in samples:
        p = model_parameters(dict(s.to_dict(), top1_error=30.0))
        assert [p[f"w{i}"] for i in range(1, 5)] == list(s.spec.widths)
        assert [p[f"g{i}"] for i in range(1, 5)] == list(s.spec.group_widths)
        assert [p[f"d{i}"] for i in range(1, 5)] == list(s.spec.depths)
        assert [p[f"b{i}"] for i in range(1, 5)] == s.config["bottleneck_ratios"]
