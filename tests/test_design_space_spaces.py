"""Design spaces and the sampler: constraints, complexity bands, reproducibility, dedupe."""
import math

import numpy as np
import pytest
import torch

from regnet_ext import design_space as ds
from regnet_ext.design_space import distributions as dist
from regnet_ext.models.complexity import complexity
from regnet_ext.models.generator import generate_regnet

BAND = (150e6, 600e6)
POWERS_OF_TWO_TO_32 = {1, 2, 4, 8, 16, 32}


def _anynet_constraints(space_name, config):
    """The paper's AnyNetX A-E rules, written out independently of the space objects."""
    d, w = config["depths"], config["widths"]
    b, g = config["bottleneck_ratios"], config["group_widths"]
    assert len(d) == len(w) == len(b) == len(g) == 4
    assert all(1 <= x <= 16 and int(x) == x for x in d)
    assert all(8 <= x <= 1024 and x % 8 == 0 for x in w)
    assert all(x in (1, 2, 4) for x in b)
    assert all(x in POWERS_OF_TWO_TO_32 for x in g)
    letter = space_name[-1]
    if letter in "bcde":
        assert len(set(b)) == 1
    if letter in "cde":
        assert len(set(g)) == 1
    if letter in "de":
        assert w == sorted(w)
    if letter == "e":
        assert d == sorted(d)


@pytest.mark.parametrize("name", ["anynetx_a", "anynetx_b", "anynetx_c", "anynetx_d", "anynetx_e"])
def test_anynet_samples_respect_every_constraint_and_band(name):
    samples = ds.sample(name, 30, flops=BAND, params=(1e6, 30e6), seed=1)
    assert len(samples) == 30
    for s in samples:
        _anynet_constraints(name, s.config)
        ds.get_space(name).check(s.config)
        cx = complexity(s.spec, 224)  # the models' own complexity, not the sampler's stagewise one
        assert (s.flops, s.params, s.acts) == tuple(cx)
        assert BAND[0] <= cx.flops <= BAND[1] and 1e6 <= cx.params <= 30e6
        # The compatibility step may lower a group width to the inner width, never raise it.
        for g_raw, g, w, bm in zip(s.config["group_widths"], s.spec.group_widths, s.spec.widths,
                                   s.spec.bottleneck_multipliers):
            assert g <= g_raw and round(w * bm) % g == 0


@pytest.mark.parametrize("name", ["regnetx", "regnety"])
def test_regnet_samples_respect_every_constraint_and_band(name):
    samples = ds.sample(name, 40, flops=(360e6, 400e6), seed=2)
    for s in samples:
        c = s.config
        assert 12 <= c["depth"] <= 28 and 8 <= c["w0"] <= 256 and c["w0"] % 8 == 0
        assert 8 <= c["wa"] <= 256 and abs(c["wa"] * 10 - round(c["wa"] * 10)) < 1e-6
        assert 2 <= c["wm"] <= 3 and abs(c["wm"] * 1000 - round(c["wm"] * 1000)) < 1e-6
        assert c["group_width"] in POWERS_OF_TWO_TO_32 or (c["group_width"] % 8 == 0
                                                            and c["group_width"] <= 32)
        assert c["bottleneck_ratio"] in (1, 2, 4)
        design = generate_regnet(c["w0"], c["wa"], c["wm"], c["depth"], c["group_width"],
                                 1 / c["bottleneck_ratio"])
        assert design.num_stages == design.total_stages == 4
        assert s.spec.widths == design.stage_widths and s.spec.depths == design.stage_depths
        assert s.spec.se_ratio == (0.25 if name == "regnety" else 0.0)
        assert 360e6 <= complexity(s.spec).flops <= 400e6


def test_sampling_is_reproducible_deduplicated_and_prefix_stable():
    a = ds.sample("regnetx", 25, flops=(200e6, 800e6), seed=7)
    b = ds.sample("regnetx", 25, flops=(200e6, 800e6), seed=7)
    c = ds.sample("regnetx", 10, flops=(200e6, 800e6), seed=7)
    d = ds.sample("regnetx", 25, flops=(200e6, 800e6), seed=8)
    assert [s.to_dict() for s in a] == [s.to_dict() for s in b]
    assert [s.to_dict() for s in c] == [s.to_dict() for s in a[:10]]
    assert [s.key for s in a] != [s.key for s in d]
    assert len({s.key for s in a}) == len(a)


def test_dedupe_in_a_space_with_few_architectures():
    # depth 1 per stage, widths in {8, 16}: exactly 2^4 = 16 distinct networks.
    space = ds.ANYNETX_A.replace(name="tiny", depth=(1, 1), width=(8, 16), group_widths=(8,),
                                 bottleneck_ratios=(1,))
    samples = ds.sample(space, 16, seed=0)
    assert sorted(tuple(s.spec.widths) for s in samples) == sorted(
        (a, b, c, d) for a in (8, 16) for b in (8, 16) for c in (8, 16) for d in (8, 16))
    with pytest.raises(RuntimeError, match="duplicate"):
        ds.sample(space, 17, seed=0, max_attempts=3000)


def test_impossible_constraints_fail_with_a_clear_error():
    with pytest.raises(RuntimeError, match=r"found only 0 of n=3 .*flops out of band"):
        ds.sample("regnetx", 3, flops=(1e3, 2e3), max_attempts=2000)
    # With the default bound, a sample that accepts nothing stops early rather than running on.
    with pytest.raises(RuntimeError, match=r"found only 0 of n=100 .* in 20000 attempts"):
        ds.sample("anynetx_e", 100, flops=(1e3, 2e3))
    with pytest.raises(ValueError, match="flops"):
        ds.sample("regnetx", 3, flops=(5e6, 1e6))
    with pytest.raises(ValueError, match="n: expected"):
        ds.sample("regnetx", 0)
    with pytest.raises(ValueError, match="space"):
        ds.sample("anynetx_z", 3)


def test_user_variants_fix_b_g_and_se():
    space = ds.REGNETX.replace(name="y_b1_g16", bottleneck_ratios=(1,), group_width=(16, 16),
                               se_ratio=0.25, wm=(2.3, 2.7))
    for s in ds.sample(space, 15, flops=(200e6, 800e6), seed=3):
        assert s.config["bottleneck_ratio"] == 1 and s.config["group_width"] == 16
        assert 2.3 <= s.config["wm"] <= 2.7 and s.spec.se_ratio == 0.25
        assert set(s.spec.bottleneck_multipliers) == {1.0} and max(s.spec.group_widths) <= 16
    with pytest.raises(ValueError, match="group_width"):
        ds.REGNETX.replace(group_width=(3, 32))
    with pytest.raises(ValueError, match="depth"):
        ds.ANYNETX_A.replace(depth=(0, 4))
    with pytest.raises(ds.InvalidConfigError, match="widths"):
        ds.ANYNETX_D.check({"depths": [1, 1, 1, 1], "widths": [64, 32, 64, 64],
                            "bottleneck_ratios": [1] * 4, "group_widths": [8] * 4})


def test_a_variant_without_a_name_is_not_taken_for_its_base_space():
    variant = ds.REGNETX.replace(wm=(2.3, 2.7))
    assert variant.name == "regnetx_custom"  # as `space sample --set` names it
    assert variant.replace(depth=(12, 20)).name == "regnetx_custom"  # one suffix, not two
    assert ds.get_space("regnetx", wm=(2.3, 2.7)).name == "regnetx_custom"
    assert ds.REGNETX.replace(name="mine", wm=(2.3, 2.7)).name == "mine"
    assert ds.REGNETX.replace(se_ratio=0.0).name == "regnetx"  # no setting changed
    assert ds.REGNETX.name == "regnetx" and ds.REGNETY.name == "regnety"
    samples = ds.sample(ds.REGNETX, 2, seed=0) + ds.sample(variant, 2, seed=0)
    assert [s.space for s in samples] == ["regnetx"] * 2 + ["regnetx_custom"] * 2
    assert samples[-1].spec.name == "regnetx_custom"
    records = [dict(s.to_dict(), top1_error=30.0) for s in samples]
    assert list(ds.group_by_space(records)) == ["regnetx", "regnetx_custom"]


def test_stagewise_complexity_matches_the_models_complexity():
    rng = np.random.default_rng(0)
    for name in ("anynetx_a", "regnety"):
        space = ds.get_space(name)
        done = 0
        while done < 20:
            config = space.draw(rng)
            try:
                spec = space.to_spec(config)
            except ds.InvalidConfigError:
                continue
            for res in (224, 32, 57):
                assert tuple(ds.stagewise_complexity(spec, res)) == tuple(complexity(spec, res))
            done += 1


def test_a_sample_becomes_a_model():
    s = ds.sample("regnety", 1, flops=(20e6, 60e6), seed=0)[0]
    model = ds.build_model(s, num_classes=10)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert sum(p.numel() for p in ds.get_space("regnety").build_model(s.config).parameters()) \
        == s.params


def test_log_uniform_matches_its_exact_distribution():
    # P(value = 8k) = P(f in (8(k-1), 8k]) for f log-uniform on (4, 256].
    rng = np.random.default_rng(0)
    n = 20000
    draws = np.array([dist.log_uniform(rng, 8, 256, 8) for _ in range(n)])
    ks = np.arange(1, 33)
    p = (np.log(8 * ks) - np.log(np.maximum(8 * (ks - 1), 4))) / math.log(256 / 4)
    counts = np.array([(draws == 8 * k).sum() for k in ks])
    assert counts.sum() == n
    assert np.all(np.abs(counts - n * p) <= 5 * np.sqrt(n * p * (1 - p)) + 1)


def test_group_width_draw_is_powers_of_two_then_multiples_of_8():
    rng = np.random.default_rng(1)
    draws = [dist.power2_or_log_uniform(rng, 1, 128, 8) for _ in range(3000)]
    assert set(draws) <= {1, 2, 4} | set(range(8, 129, 8))
    assert {1, 2, 4, 8, 24, 128} <= set(draws)
    # The power-of-two step picks < 8 with probability 3/8 (exponents 0..7, three below 8).
    share_small = np.mean(np.array(draws) < 8)
    assert abs(share_small - 3 / 8) < 5 * math.sqrt(3 / 8 * 5 / 8 / 3000)


@pytest.mark.parametrize("resolution", [0, -224, (224, 0), (224,), 22.4])
def test_sample_refuses_a_resolution_that_is_not_positive_integers(resolution):
    with pytest.raises(ValueError, match="resolution: expected an integer >= 1"):
        ds.sample("regnetx", 2, resolution=resolution)


def test_pycls_sampler_defaults_are_a_regnetx_variant():
    # pycls's REGNET_SAMPLER: GROUP_W [8, 128] (power2_or_log_uniform, quantum 8), BOT_MUL [1, 1].
    space = ds.REGNETX.replace(group_width=(8, 128), bottleneck_ratios=(1,))
    samples = ds.sample(space, 60, flops=(360e6, 400e6), seed=0)
    groups = {s.config["group_width"] for s in samples}
    assert groups <= set(range(8, 129, 8)) and len(groups) >= 6
    assert any(g not in POWERS_OF_TWO_TO_32 for g in groups)  # multiples of 8, not only 2^k
    for s in samples:
        space.check(s.config)
        assert s.config["bottleneck_ratio"] == 1 and set(s.spec.bottleneck_multipliers) == {1.0}
        # A stage narrower than g builds with its width as the group width.
        assert all(g <= min(s.config["group_width"], w) and w % g == 0
                   for g, w in zip(s.spec.group_widths, s.spec.widths))
    rng = np.random.default_rng(0)
    draws = [space.draw(rng)["group_width"] for _ in range(4000)]
    assert set(draws) == set(range(8, 129, 8))  # every multiple of 8 in [8, 128], nothing else
