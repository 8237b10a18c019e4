"""Bad input to conv_bn_act raises a clear error naming the argument, from the Python face
(ValueError) and from the operators called directly (RuntimeError)."""
import pytest
import torch

from conv_bn_act_reference import make_case
from regnet_ext.ops import conv_bn_act

ops = torch.ops.regnet_ext


def _call(case, **overrides):
    args = dict(case)
    args.update(overrides)
    kw = {k: args.pop(k) for k in list(args) if k not in
          ("x", "weight", "bn_weight", "bn_bias", "running_mean", "running_var")}
    kw.setdefault("groups", 2)
    return conv_bn_act(args["x"], args["weight"], args["bn_weight"], args["bn_bias"],
                       args["running_mean"], args["running_var"], **kw)


@pytest.fixture
def case():
    return make_case(2, 8, 8, 7, 3, 1, 2)


@pytest.mark.parametrize("overrides, match", [
    (lambda c: dict(weight=c["weight"].double()), "weight must have x's dtype"),
    (lambda c: dict(bn_weight=c["bn_weight"].to("meta")), "bn_weight must be on x's device"),
    (lambda c: dict(residual=c["residual"].half()), "residual must have x's dtype"),
    (lambda c: dict(x=c["x"][0]), "x must be 4-D"),
    (lambda c: dict(x=c["x"].long()), "x must be float32"),
    (lambda c: dict(weight=c["weight"][:, :, :, 0]), "weight must be 4-D"),
    (lambda c: dict(groups=3), r"x's channels \(8\) must be divisible by groups \(3\)"),
    (lambda c: dict(weight=torch.randn(8, 8, 3, 3)), r"weight must have shape \[C_out, C_in/groups=4, K, K\] \(x has 8 channels, groups=2\)"),
    (lambda c: dict(x=c["x"][:0]), r"x and weight must not be empty, got shapes \[0, 8, 7, 7\]"),
    (lambda c: dict(weight=torch.randn(8, 4, 2, 2)), "kernel size must be odd"),
    (lambda c: dict(bn_weight=torch.randn(7)), r"bn_weight must have shape \[8\]"),
    (lambda c: dict(bn_bias=torch.randn(8, 1)), r"bn_bias must have shape \[8\]"),
    (lambda c: dict(bias=torch.randn(9)), r"bias must have shape \[8\]"),
    (lambda c: dict(running_var=torch.randn(4)), r"running_var must have shape \[8\]"),
    (lambda c: dict(residual=torch.randn(2, 8, 4, 4)), r"residual must have shape \[2, 8, 7, 7\]"),
    (lambda c: dict(running_mean=None), "training=False needs running_mean and running_var"),
    (lambda c: dict(training=True, running_var=None), "running_mean and running_var must both be given"),
    (lambda c: dict(training=True, momentum=None), "momentum=None .* needs num_batches_tracked"),
    (lambda c: dict(stride=0), "stride >= 1"),
    (lambda c: dict(x=torch.randn(2, 8, 1, 1), padding=0), "smaller than the kernel"),
])
def test_python_face_names_the_bad_argument(case, overrides, match):
    with pytest.raises(ValueError, match=match):
        _call(case, **overrides(case))


def test_operators_called_directly_check_their_inputs(case):
    base = (case["x"], case["weight"], case["bias"], case["bn_weight"], case["bn_bias"])
    with pytest.raises(RuntimeError, match="residual must have shape"):
        ops.conv_bn_act_train(*base, torch.randn(2, 8, 3, 3), 1, 1, 2, 1e-5, True)
    with pytest.raises(RuntimeError, match="running_mean must have shape"):
        ops.conv_bn_act_eval(*base, torch.randn(3), case["running_var"], None, 1, 1, 2, 1e-5, True)
    with pytest.raises(RuntimeError, match="divisible by groups"):
        ops.conv_bn_act_eval(*base, case["running_mean"], case["running_var"], None, 1, 1, 3, 1e-5, True)
    with pytest.raises(RuntimeError, match="kernel size must be odd"):
        ops.conv_bn_act_train(case["x"], torch.randn(8, 4, 2, 2), None, case["bn_weight"],
                              case["bn_bias"], None, 1, 0, 2, 1e-5, True)
    y, z, mean, var = ops.conv_bn_act_train(*base, None, 1, 1, 2, 1e-5, True)
    with pytest.raises(RuntimeError, match="grad_y must have shape"):
        ops.conv_bn_act_backward(y[:, :4], y, case["x"], case["weight"], None, case["bn_weight"], z,
                                 mean, var, 1, 1, 2, 1e-5, True, True, True, True)
    with pytest.raises(RuntimeError, match="training mode needs conv_out"):
        ops.conv_bn_act_backward(y, y, case["x"], case["weight"], None, case["bn_weight"], None,
                                 mean, var, 1, 1, 2, 1e-5, True, True, True, True)
    with pytest.raises(RuntimeError, match="needs num_batches_tracked"):
        ops.conv_bn_act_update_running_stats(case["running_mean"], case["running_var"], mean, var,
                                             None, 10, 0.0, True)


def test_a_refused_training_call_changes_no_statistics(case):
    counter = torch.tensor(5)
    mean_before = case["running_mean"].clone()
    with pytest.raises(ValueError, match=r"running_var must have shape \[8\]"):
        _call(case, training=True, running_var=torch.rand(7), num_batches_tracked=counter)
    assert counter.item() == 5
    torch.testing.assert_close(case["running_mean"], mean_before, rtol=0, atol=0)


def test_training_keeps_running_statistics_in_their_own_dtype(case):
    # As stock BN under autocast: float64 activations, float32 running statistics.
    c = {k: (v.double() if isinstance(v, torch.Tensor) and k not in ("running_mean", "running_var") else v)
         for k, v in case.items()}
    before = c["running_mean"].clone()
    _call(c, training=True)
    assert c["running_mean"].dtype == torch.float32
    assert not torch.equal(c["running_mean"], before)
