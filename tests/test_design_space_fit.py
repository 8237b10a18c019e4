"""The quantized-linear width fit: recovers generated RegNets, rejects arbitrary widths."""
import numpy as np
import pytest

from regnet_ext.design_space import fit_error, fit_widths, per_block_widths
from regnet_ext.design_space.fit import _generate
from regnet_ext.models.generator import generate_regnet, quantized_widths


def _random_regnet_params(rng):
    return (8 * int(rng.integers(2, 24)), round(float(rng.uniform(8, 120)), 1),
            round(float(rng.uniform(1.6, 2.9)), 3), int(rng.integers(8, 30)))


def test_vectorised_generator_equals_the_models_generator():
    rng = np.random.default_rng(0)
    for _ in range(50):
        w0, wa, wm, d = _random_regnet_params(rng)
        got = _generate(w0, np.array([wa]), np.array([wm]), d, 8)[0, 0]
        assert got.astype(int).tolist() == quantized_widths(w0, wa, wm, d)[2]


def test_fit_recovers_generated_regnets_exactly():
    rng = np.random.default_rng(1)
    for _ in range(25):
        w0, wa, wm, d = _random_regnet_params(rng)
        widths = quantized_widths(w0, wa, wm, d)[2]
        fit = fit_widths(widths)
        assert fit.e_fit == 0.0 and list(fit.fitted_widths) == widths
        # The fitted parameters themselves generate the widths (checked by the real generator),
        # w0 is identifiable exactly, and wm lands near the truth.
        assert quantized_widths(fit.w0, fit.wa, fit.wm, d)[2] == widths
        assert fit.w0 == w0
        if len(set(widths)) >= 3:
            assert abs(fit.wm - wm) / wm < 0.1


def test_fit_of_a_regnet_after_the_compatibility_step_is_near_zero():
    # Stage widths moved by the group-width compatibility step still fit to within a few percent.
    design = generate_regnet(24, 24.48, 2.54, 22, 16)  # RegNetX-400MF: 368 -> 384 in stage 4
    spec = design.to_spec()
    fit = fit_widths(spec)
    assert fit.depth == 22 and per_block_widths(spec)[-1] == 384
    assert 0 < fit.e_fit < 0.05


def test_random_widths_fit_badly():
    rng = np.random.default_rng(2)
    for _ in range(5):
        widths = np.exp(rng.uniform(np.log(8), np.log(1024), size=20)).round().astype(int).tolist()
        fit = fit_widths(widths)
        assert fit.e_fit > 0.3
        assert fit.e_fit == pytest.approx(fit_error(widths, fit.fitted_widths))


def test_fit_error_definition():
    assert fit_error([8, 16, 32], [8, 16, 32]) == 0.0
    # mean |ln(fit / w)|: ln 2 for a doubled width, ln 2 for a halved one, 0 for the third.
    assert fit_error([8, 16, 32], [16, 8, 32]) == pytest.approx(2 * np.log(2) / 3)
    with pytest.raises(ValueError, match="widths"):
        fit_error([8, 16], [8])
    with pytest.raises(ValueError, match="widths"):
        fit_widths([])
    with pytest.raises(ValueError, match="wm_range"):
        fit_widths([8, 16], wm_range=(0.5, 3))
