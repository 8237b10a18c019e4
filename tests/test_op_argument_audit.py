"""Arguments that the operators used to accept silently (wrong or empty results) or refuse with an
error naming no argument: eps, empty spatial sizes, num_batches_tracked, running statistics of a
non-floating dtype, and meta tensors mixed with real ones (which the dispatcher sends to the fake
kernels)."""
import pytest
import torch

from conv_bn_act_reference import make_case
from regnet_ext.ops import conv_bn_act

ops = torch.ops.regnet_ext


@pytest.fixture
def case():
    return make_case(2, 8, 8, 7, 3, 1, 2, residual=False)


def _call(c, **kw):
    kw.setdefault("groups", 2)
    return conv_bn_act(c["x"], c["weight"], c["bn_weight"], c["bn_bias"], c["running_mean"],
                       c["running_var"], **kw)


def _base(c):
    return c["x"], c["weight"], c["bias"], c["bn_weight"], c["bn_bias"]


# ---- eps ------------------------------------------------------------------------------------

@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("eps", [-1e-3, float("nan")])
def test_bad_eps_is_refused_as_stock_batch_norm_does(case, training, eps):
    # Stock F.batch_norm: "batch_norm eps must be non-negative". We returned numbers (negative eps)
    # or all zeros behind the ReLU (NaN eps).
    with pytest.raises(ValueError, match=r"eps must be a non-negative number, got (-0.001|nan)"):
        _call(case, training=training, eps=eps)


def test_bad_eps_is_refused_by_the_operators(case):
    rm, rv = case["running_mean"], case["running_var"]
    with pytest.raises(RuntimeError, match="conv_bn_act: eps must be a non-negative number, got -0.5"):
        ops.conv_bn_act_eval(*_base(case), rm, rv, None, 1, 1, 2, -0.5, True)
    with pytest.raises(RuntimeError, match="eps must be a non-negative number, got nan"):
        ops.conv_bn_act_train(*_base(case), None, 1, 1, 2, float("nan"), True)
    y, z, mean, var = ops.conv_bn_act_train(*_base(case), None, 1, 1, 2, 1e-5, True)
    with pytest.raises(RuntimeError, match="eps must be a non-negative number, got -1"):
        ops.conv_bn_act_backward(y, y, case["x"], case["weight"], case["bias"], case["bn_weight"], z,
                                 mean, var, 1, 1, 2, -1.0, True, True, True, True)
    assert torch.isfinite(_call(case, eps=0.0)).all()  # zero, as stock BN allows


# ---- empty spatial sizes ----------------------------------------------------------------------

@pytest.mark.parametrize("dim", [2, 3])
def test_empty_height_or_width_is_refused(case, dim):
    # With padding 2 an input of height 0 gave a [2, 8, 2, 9] output made of padding alone; stock
    # conv2d: "Only zero batch or zero channel inputs are supported".
    x = case["x"].narrow(dim, 0, 0)
    with pytest.raises(ValueError, match=r"x and weight must not be empty, got shapes \[2, 8, "):
        _call(dict(case, x=x), padding=2)
    with pytest.raises(RuntimeError, match=r"x and weight must not be empty, got shapes \[2, 8, "):
        ops.conv_bn_act_train(x, *_base(case)[1:], None, 1, 2, 2, 1e-5, True)


# ---- num_batches_tracked and the running statistics in training ---------------------------

@pytest.mark.parametrize("counter, match", [
    (3, "num_batches_tracked must be a Tensor, got int"),
    (torch.tensor(False), "num_batches_tracked must be an integer or floating tensor .* got torch.bool"),
    (torch.zeros(2, dtype=torch.long), r"num_batches_tracked must have one element, got shape \[2\]"),
    (torch.zeros((), dtype=torch.long, device="meta"),
     r"num_batches_tracked must be on running_mean's device \(cpu\), got meta"),
])
@pytest.mark.parametrize("momentum", [None, 0.1])
def test_bad_num_batches_tracked_is_refused_and_changes_nothing(case, counter, match, momentum):
    # Before: AttributeError / a dtype-cast error / "needs num_batches_tracked" though it was given,
    # every element of a [2] counter counted up with momentum=0.1, and a meta counter sent the
    # update to the fake kernel: no update, no error.
    mean_before, var_before = case["running_mean"].clone(), case["running_var"].clone()
    counter_before = counter.clone() if isinstance(counter, torch.Tensor) and counter.device.type == "cpu" else None
    with pytest.raises(ValueError, match=match):
        _call(case, training=True, momentum=momentum, num_batches_tracked=counter)
    assert torch.equal(case["running_mean"], mean_before) and torch.equal(case["running_var"], var_before)
    if counter_before is not None:
        assert torch.equal(counter, counter_before)


def test_update_operator_checks_num_batches_tracked(case):
    rm, rv = case["running_mean"], case["running_var"]
    with pytest.raises(RuntimeError, match=r"num_batches_tracked must have one element, got shape \[2\]"):
        ops.conv_bn_act_update_running_stats(rm, rv, rm.clone(), rv.clone(), torch.ones(2, dtype=torch.long),
                                             10, 0.1, False)
    with pytest.raises((RuntimeError, ValueError), match="num_batches_tracked must be on"):
        ops.conv_bn_act_update_running_stats(rm, rv, rm.clone(), rv.clone(),
                                             torch.ones((), dtype=torch.long, device="meta"), 10, 0.0, True)


def test_integer_running_statistics_are_refused_in_training(case):
    # These reached the running-statistics kernel, whose dtype dispatch then failed for Long
    # without naming the argument.
    rm, rv = case["running_mean"].long(), case["running_var"].long()
    with pytest.raises(ValueError, match="running_mean must be float32, float64, bfloat16 or float16, got torch.int64"):
        _call(dict(case, running_mean=rm, running_var=rv), training=True)
    with pytest.raises(RuntimeError, match="running_mean must be float32, float64, bfloat16 or float16, got Long"):
        ops.conv_bn_act_update_running_stats(rm, rv, case["running_mean"], case["running_var"], None, 10, 0.1,
                                             False)


def test_update_operator_names_a_batch_statistic_of_the_wrong_dtype(case):
    rm, rv = case["running_mean"], case["running_var"]
    with pytest.raises(RuntimeError, match="batch_mean must be float32 or float64, got Half"):
        ops.conv_bn_act_update_running_stats(rm, rv, rm.half(), rv.float(), None, 10, 0.1, False)


# ---- meta tensors mixed with CPU ones ---------------------------------------------------------

def test_meta_running_statistics_with_cpu_x_are_refused_in_eval(case):
    # Before: the call went to the fake kernel, which returned an uninitialised CPU tensor.
    rm, rv = case["running_mean"].to("meta"), case["running_var"].to("meta")
    with pytest.raises(ValueError, match=r"running_mean must be on x's device \(cpu\), got meta"):
        _call(dict(case, running_mean=rm, running_var=rv))
    with pytest.raises(ValueError, match=r"running_mean must be on x's device \(cpu\), got meta"):
        ops.conv_bn_act_eval(*_base(case), rm, rv, None, 1, 1, 2, 1e-5, True)
    # All-meta calls (tracing) still go through.
    meta = {k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
    assert _call(meta).shape == (2, 8, 7, 7)
    counter = torch.zeros((), dtype=torch.long, device="meta")
    assert _call(meta, training=True, momentum=None, num_batches_tracked=counter).device.type == "meta"


def test_meta_running_statistics_with_cpu_batch_statistics_are_refused(case):
    # Before: no update and no error.
    rm, rv = case["running_mean"].to("meta"), case["running_var"].to("meta")
    with pytest.raises(ValueError, match=r"batch_mean must be on the device of the other arguments \(meta\), got cpu"):
        ops.conv_bn_act_update_running_stats(rm, rv, case["running_mean"], case["running_var"], None, 10, 0.1,
                                             False)


def test_backward_with_a_meta_statistic_is_refused(case):
    y, z, mean, var = ops.conv_bn_act_train(*_base(case), None, 1, 1, 2, 1e-5, True)
    with pytest.raises(ValueError, match=r"mean must be on the device of the other arguments \(cpu\), got meta"):
        ops.conv_bn_act_backward(y, y, case["x"], case["weight"], case["bias"], case["bn_weight"], z,
                                 mean.to("meta"), var.to("meta"), 1, 1, 2, 1e-5, True, True, True, True)


def test_squeeze_excite_backward_with_a_meta_grad_is_refused():
    x = torch.randn(2, 8, 5, 5)
    w1, b1, w2, b2 = torch.randn(4, 8), torch.randn(4), torch.randn(8, 4), torch.randn(8)
    # Before: the fake kernel's uninitialised CPU gradients.
    with pytest.raises(ValueError, match=r"grad_y must be on x's device \(cpu\), got meta"):
        ops.squeeze_excite_backward(x.to("meta"), x, w1, b1, w2, b2)


# ---- huge padding -----------------------------------------------------------------------------

def test_huge_padding_is_refused_by_name(case):
    # Before: "numel: integer multiplication overflow", naming no argument.
    with pytest.raises(ValueError, match=r"padding must be at most 2\^31 - 1, got 1099511627776"):
        _call(case, padding=2**40)
    with pytest.raises(RuntimeError, match=r"padding must be at most 2\^31 - 1, got 1099511627776"):
        ops.conv_bn_act_train(*_base(case), None, 1, 2**40, 2, 1e-5, True)
    with pytest.raises(RuntimeError, match=r"the output \[2, 8, 2147483653, 2147483653\] has too many elements"):
        ops.conv_bn_act_eval(*_base(case), case["running_mean"], case["running_var"], None, 1, 2**30, 2,
                             1e-5, True)
