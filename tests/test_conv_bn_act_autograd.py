"""conv_bn_act's operators as operators: float64 gradcheck, torch.library.opcheck on every one,
torch.compile(fullgraph=True) of a small model using conv_bn_act and squeeze_excite, the
refusal of double backward and of forward-mode AD, and calls without autograd (no graph, the same
values)."""
import pytest
import torch

from conv_bn_act_reference import make_case
from regnet_ext.ops import conv_bn_act, pool_linear, squeeze_excite
from tolerances import assert_close_to_reference

ops = torch.ops.regnet_ext

# (c_in, c_out, kernel, stride, groups): grouped 3x3 tiles, the 1x1 GEMM path, stride-2 GEMM.
GRAD_SHAPES = [(8, 8, 3, 2, 2), (4, 6, 1, 1, 1), (4, 6, 1, 2, 1), (4, 4, 3, 1, 1)]


@pytest.mark.parametrize("shape", GRAD_SHAPES, ids=["grouped3x3_s2", "gemm", "gemm_s2", "dense3x3"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_gradcheck_float64(shape, training, channels_last, monkeypatch):
    c_in, c_out, kernel, stride, groups = shape
    # Our register tiles on channels_last, ATen's conv on NCHW: both backends are checked.
    monkeypatch.setenv("REGNET_EXT_CPU_CONV", "tiles" if channels_last else "aten")
    case = make_case(2, c_in, c_out, 5, kernel, stride, groups, dtype=torch.float64,
                     channels_last=channels_last)
    running_mean, running_var = case["running_mean"], case["running_var"]

    def fn(x, weight, bias, bn_weight, bn_bias, residual):
        # Fresh running stats per call: gradcheck calls fn many times.
        return conv_bn_act(x, weight, bn_weight, bn_bias, running_mean.clone(), running_var.clone(),
                           bias=bias, stride=stride, groups=groups, training=training,
                           residual=residual, relu=False)

    inputs = [case[k].detach().clone().requires_grad_() for k in
              ("x", "weight", "bias", "bn_weight", "bn_bias", "residual")]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_with_relu_and_only_some_inputs_requiring_grad():
    case = make_case(2, 8, 8, 6, 3, 1, 2, dtype=torch.float64, channels_last=True)
    x = case["x"].detach().requires_grad_()
    bn_weight = case["bn_weight"].detach().requires_grad_()

    def fn(x, bn_weight):
        return conv_bn_act(x, case["weight"], bn_weight, case["bn_bias"], case["running_mean"].clone(),
                           case["running_var"].clone(), groups=2, training=True)

    assert torch.autograd.gradcheck(fn, (x, bn_weight), eps=1e-6, atol=1e-6, rtol=1e-5)


def _op_args(case, stride, groups, training):
    common = (case["x"], case["weight"], case["bias"], case["bn_weight"], case["bn_bias"])
    padding = case["weight"].shape[-1] // 2
    if training:
        return common + (case["residual"], stride, padding, groups, 1e-5, True)
    return common + (case["running_mean"], case["running_var"], case["residual"], stride, padding,
                     groups, 1e-5, True)


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_opcheck_forward_operators(requires_grad, channels_last, monkeypatch):
    monkeypatch.setenv("REGNET_EXT_CPU_CONV", "tiles" if requires_grad else "aten")
    case = make_case(2, 8, 8, 6, 3, 2, 2, channels_last=channels_last)
    for k in ("x", "weight", "bias", "bn_weight", "bn_bias", "residual"):
        case[k] = case[k].detach().requires_grad_(requires_grad)
    torch.library.opcheck(ops.conv_bn_act_eval.default, _op_args(case, 2, 2, False))
    torch.library.opcheck(ops.conv_bn_act_eval.uncached, _op_args(case, 2, 2, False))
    torch.library.opcheck(ops.conv_bn_act_train.default, _op_args(case, 2, 2, True))


def test_opcheck_gemm_path_and_no_bias():
    case = make_case(2, 8, 12, 6, 1, 1, 1, channels_last=True, bias=False)
    torch.library.opcheck(ops.conv_bn_act_eval.default, _op_args(case, 1, 1, False))
    torch.library.opcheck(ops.conv_bn_act_train.default, (case["x"], case["weight"], None,
                                                          case["bn_weight"], case["bn_bias"], None,
                                                          1, 0, 1, 1e-5, False))


def _forward_outputs(case, training):
    """(y, z, mean, var) as the backward operator takes them (groups=2, stride 1): z is None and
    mean/var are the running statistics in eval."""
    if training:
        return ops.conv_bn_act_train(*_op_args(case, 1, 2, True))
    return ops.conv_bn_act_eval(*_op_args(case, 1, 2, False)), None, case["running_mean"], case["running_var"]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_opcheck_backward_operator(training):
    case = make_case(2, 8, 8, 6, 3, 1, 2, channels_last=True)
    y, z, mean, var = _forward_outputs(case, training)
    grad_y = torch.randn_like(y)
    for input_grad, param_grads, residual_grad in [(True, True, True), (False, True, True),
                                                   (True, False, True), (True, True, False)]:
        torch.library.opcheck(ops.conv_bn_act_backward.default,
                              (grad_y, y, case["x"], case["weight"], case["bias"], case["bn_weight"], z,
                               mean, var, 1, 1, 2, 1e-5, True, training, input_grad, param_grads,
                               residual_grad))


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_backward_without_residual_gradient_gives_the_same_other_gradients(training):
    # residual_grad=False lets the training backward reuse ReLU's gradient buffer for dz.
    case = make_case(3, 16, 16, 9, 3, 1, 2, channels_last=True)
    y, z, mean, var = _forward_outputs(case, training)
    grad_y = torch.randn_like(y)
    args = (grad_y, y, case["x"], case["weight"], case["bias"], case["bn_weight"], z, mean, var,
            1, 1, 2, 1e-5, True, training, True, True)
    with_residual = ops.conv_bn_act_backward(*args, True)
    without = ops.conv_bn_act_backward(*args, False)
    for name, a, b in zip(("x", "weight", "bias", "bn_weight", "bn_bias"), with_residual[:5], without[:5]):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=f"grad of {name} changed")
    assert with_residual[5].shape == y.shape and without[5].numel() == 0


def test_opcheck_running_stats_update():
    running_mean, running_var = torch.randn(8), torch.rand(8) + 0.5
    tracked = torch.tensor(3, dtype=torch.long)
    torch.library.opcheck(ops.conv_bn_act_update_running_stats.default,
                          (running_mean, running_var, torch.randn(8), torch.rand(8), None, 50, 0.1, False))
    torch.library.opcheck(ops.conv_bn_act_update_running_stats.default,
                          (running_mean, running_var, torch.randn(8), torch.rand(8), tracked, 50, 0.0, True))


def test_double_backward_is_refused():
    case = make_case(2, 8, 8, 5, 3, 1, 2, dtype=torch.float64)
    x = case["x"].detach().requires_grad_()
    y = conv_bn_act(x, case["weight"], case["bn_weight"], case["bn_bias"], case["running_mean"],
                    case["running_var"], groups=2, training=True)
    (grad_x,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad_x.sum().backward()


def _forward_operator_calls():
    """(name, call) for each forward operator on fresh float64 Parameters, grouped 3x3 convs."""
    case = make_case(2, 8, 8, 5, 3, 1, 2, dtype=torch.float64, channels_last=True)
    p = {k: torch.nn.Parameter(case[k].detach().clone()) for k in ("weight", "bias", "bn_weight", "bn_bias")}
    x = case["x"].detach()
    se = [torch.nn.Parameter(torch.randn(*s, dtype=torch.float64)) for s in ((2, 8), (2,), (8, 2), (8,))]
    head = [torch.nn.Parameter(torch.randn(*s, dtype=torch.float64)) for s in ((5, 8), (5,))]
    stats = lambda: (case["running_mean"].clone(), case["running_var"].clone())  # noqa: E731
    return [
        ("eval", lambda x: conv_bn_act(x, p["weight"], p["bn_weight"], p["bn_bias"], *stats(), bias=p["bias"],
                                       groups=2)),
        ("train", lambda x: conv_bn_act(x, p["weight"], p["bn_weight"], p["bn_bias"], *stats(), bias=p["bias"],
                                        groups=2, training=True)),
        ("squeeze_excite", lambda x: squeeze_excite(x, *se)),
        ("pool_linear", lambda x: pool_linear(x, *head)),
    ], x


def test_calls_without_autograd_build_no_graph_and_give_the_same_values():
    # The Autograd kernels run a call without the autograd Function where no input requires
    # grad (csrc/autograd.cpp: needs_autograd); with grad mode on the Function still builds the graph.
    calls, x = _forward_operator_calls()
    for name, call in calls:
        y = call(x)
        assert y.grad_fn is not None and y.requires_grad, name
        with torch.no_grad():
            y_no_grad = call(x)
        assert y_no_grad.grad_fn is None and not y_no_grad.requires_grad, name
        torch.testing.assert_close(y_no_grad, y.detach(), rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("grad_mode", [True, False], ids=["grad", "no_grad"])
def test_forward_mode_ad_is_refused(grad_mode):
    # A forward-mode tangent still takes the autograd Function, which has no jvp and says so.
    import torch.autograd.forward_ad as fwAD

    calls, x = _forward_operator_calls()
    for name, call in calls:
        with fwAD.dual_level(), torch.set_grad_enabled(grad_mode):
            dual = fwAD.make_dual(x, torch.randn_like(x))
            with pytest.raises(RuntimeError, match="jvp is not implemented"):
                call(dual)


class _TinyBlock(torch.nn.Module):
    """conv_bn_act (grouped 3x3) -> squeeze_excite -> conv_bn_act (1x1, residual, ReLU)."""

    def __init__(self, c=16, c_se=4):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        p = lambda *s: torch.nn.Parameter(torch.randn(*s, generator=g) * 0.3)
        self.w1, self.w2 = p(c, 8, 3, 3), p(c, c, 1, 1)
        self.gamma1, self.beta1, self.gamma2, self.beta2 = p(c), p(c), p(c), p(c)
        self.se_w1, self.se_b1, self.se_w2, self.se_b2 = p(c_se, c), p(c_se), p(c, c_se), p(c)
        for i in (1, 2):
            self.register_buffer(f"mean{i}", torch.zeros(c))
            self.register_buffer(f"var{i}", torch.ones(c))
            self.register_buffer(f"tracked{i}", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        h = conv_bn_act(x, self.w1, self.gamma1, self.beta1, self.mean1, self.var1, groups=2,
                        training=self.training, num_batches_tracked=self.tracked1)
        h = squeeze_excite(h, self.se_w1, self.se_b1, self.se_w2, self.se_b2)
        return conv_bn_act(h, self.w2, self.gamma2, self.beta2, self.mean2, self.var2,
                           training=self.training, num_batches_tracked=self.tracked2, residual=x)


def test_torch_compile_fullgraph_traces_both_operators():
    torch._dynamo.reset()
    eager, compiled_model = _TinyBlock(), _TinyBlock()
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    # Training: forward, backward and the in-place running-statistics update.
    y_eager, y_compiled = eager(x), compiled(x)
    assert_close_to_reference(y_compiled, y_eager.double(), name="compiled training y")
    y_eager.square().sum().backward()
    y_compiled.square().sum().backward()
    for (name, p_e), p_c in zip(eager.named_parameters(), compiled_model.parameters()):
        assert_close_to_reference(p_c.grad, p_e.grad.double(), name=f"compiled grad of {name}")
    for (name, b_e), b_c in zip(eager.named_buffers(), compiled_model.buffers()):
        assert torch.allclose(b_c.double(), b_e.double(), atol=1e-6), f"buffer {name} after a compiled step"
    # Eval: running statistics, folded BN.
    eager.eval()
    compiled_model.eval()
    with torch.no_grad():
        assert_close_to_reference(compiled(x), eager(x).double(), name="compiled eval y")


@pytest.mark.slow
def test_torch_compile_inductor_eval():
    torch._dynamo.reset()
    model = _TinyBlock().eval()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert_close_to_reference(compiled(x), model(x).double(), name="inductor eval y")
