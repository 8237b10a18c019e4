"""squeeze_excite (forward and backward) against a float64 plain-PyTorch reference."""
import pytest
import torch

from regnet_ext.ops.squeeze_excite import squeeze_excite
from tolerances import assert_close_to_reference

OP = torch.ops.regnet_ext.squeeze_excite.default
BACKWARD_OP = torch.ops.regnet_ext.squeeze_excite_backward.default


def reference(x, w1, b1, w2, b2):
    """Plain PyTorch SE in x's dtype (the 1x1 convs of an SE module, written as matmuls)."""
    hidden, channels = w1.shape[0], x.shape[1]
    s = x.mean(dim=(2, 3))
    z = torch.relu(s @ w1.reshape(hidden, channels).t() + b1)
    g = torch.sigmoid(z @ w2.reshape(channels, hidden).t() + b2)
    return x * g[:, :, None, None]


def make_inputs(n, c, h, w, hidden, *, dtype=torch.float32, layout="channels_last", conv_weights=False):
    """Fresh random inputs; weights scaled so the gates spread over (0, 1) and some z are 0."""
    x = torch.randn(n, c, h, w, dtype=torch.float64) + 0.3
    w1 = torch.randn(hidden, c, dtype=torch.float64) / c ** 0.5
    b1 = torch.randn(hidden, dtype=torch.float64) * 0.5
    w2 = torch.randn(c, hidden, dtype=torch.float64) * 2 / hidden ** 0.5
    b2 = torch.randn(c, dtype=torch.float64) * 0.5
    if conv_weights:
        w1, w2 = w1[:, :, None, None], w2[:, :, None, None]
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # a channels_last view with a gap between pixels
        x = torch.randn(n, h, w, c + 3, dtype=torch.float64)[..., :c].permute(0, 3, 1, 2)
    return [t.to(dtype) for t in (x, w1, b1, w2, b2)]


def grads(fn, inputs, grad_y):
    leaves = [t.detach().requires_grad_() for t in inputs]
    y = fn(*leaves)
    return y, torch.autograd.grad(y, leaves, grad_y)


SHAPES = [  # (N, C, H, W, C_se): RegNetY-like, odd/even spatial sizes, tiny, 1x1 spatial
    (1, 48, 14, 14, 12),
    (3, 37, 7, 13, 5),
    (2, 104, 13, 14, 26),
    (3, 8, 1, 1, 1),
    (1, 1, 3, 3, 1),
]
LAYOUTS = ["channels_last", "nchw", "strided"]


def _assert_matches_reference(inputs, grad_y, y, got):
    """y and the gradients (x, w1, b1, w2, b2) against the float64 plain-PyTorch reference."""
    y_ref, want = grads(reference, [t.double() for t in inputs], grad_y.double())
    assert_close_to_reference(y, y_ref, name="y")
    for name, g, r in zip(("x", "w1", "b1", "w2", "b2"), got, want):
        assert_close_to_reference(g, r, name=f"grad_{name}")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_and_backward_match_float64_reference(shape, layout, dtype):
    inputs = make_inputs(*shape, dtype=dtype, layout=layout)
    grad_y = torch.randn(inputs[0].shape, dtype=dtype)
    y, got = grads(squeeze_excite, inputs, grad_y)
    _assert_matches_reference(inputs, grad_y, y, got)


@pytest.mark.parametrize("layout", ["channels_last", "nchw", "strided"])
def test_output_keeps_input_memory_format(layout):
    inputs = make_inputs(2, 24, 5, 6, 6, layout=layout)
    x = inputs[0].detach().requires_grad_()
    y = squeeze_excite(x, *inputs[1:])
    channels_last = layout != "nchw"
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    (dx,) = torch.autograd.grad(y, x, torch.randn_like(y))
    assert dx.shape == x.shape


@pytest.mark.parametrize("channels", [64, 40])
@pytest.mark.parametrize("threads", [1, 2, 3, 5])
def test_small_batch_splits_pixels_across_threads(threads, channels):
    # N < threads: pooling is split into pixel chunks whose partial sums are merged (their rows
    # padded to whole cache lines: 40 channels are not a whole number of them).
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inputs = make_inputs(1, channels, 29, 31, channels // 4)
        grad_y = torch.randn(inputs[0].shape)
        y, got = grads(squeeze_excite, inputs, grad_y)
    finally:
        torch.set_num_threads(previous)
    _assert_matches_reference(inputs, grad_y, y, got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", [(2, 64, 96, 97, 16), (3, 1040, 3, 4, 260)], ids=["big-sample", "big-mlp"])
def test_batch_wide_schedule(threads, shape, dtype):
    # Samples too large for one core's cache, or MLP weights too large to re-read per sample
    # (2 MB here, over half of any L2 up to 4 MB), take the batch-wide schedule: pool all, the MLP
    # and its backward a share of each weight's rows per thread across the batch, then scale.
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inputs = make_inputs(*shape, dtype=dtype)
        grad_y = torch.randn(inputs[0].shape, dtype=dtype)
        y, got = grads(squeeze_excite, inputs, grad_y)
    finally:
        torch.set_num_threads(previous)
    _assert_matches_reference(inputs, grad_y, y, got)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("batch", [1, 2])  # (with 2 threads: the batch schedule, then per sample)
def test_reduced_precision_within_plain_torch_error(dtype, layout, batch):
    # The forward's MLP reads the 16-bit weights as they are, converting them as it loads them.
    inputs = make_inputs(batch, 72, 9, 10, 18, dtype=dtype, layout=layout)
    grad_y = torch.randn(inputs[0].shape).to(dtype)
    y, got = grads(squeeze_excite, inputs, grad_y)
    y_plain, plain = grads(reference, inputs, grad_y)
    y_ref, want = grads(reference, [t.double() for t in inputs], grad_y.double())
    assert y.dtype == dtype and all(g.dtype == dtype for g in got)
    assert_close_to_reference(y, y_ref, plain_torch=y_plain, name="y")
    for name, g, p, r in zip(("x", "w1", "b1", "w2", "b2"), got, plain, want):
        assert_close_to_reference(g, r, plain_torch=p, name=f"grad_{name}")


def test_conv_shaped_weights_give_conv_shaped_gradients():
    inputs = make_inputs(2, 16, 5, 5, 4, conv_weights=True)
    grad_y = torch.randn(inputs[0].shape)
    y, got = grads(squeeze_excite, inputs, grad_y)
    y_ref, want = grads(reference, [t.double() for t in inputs], grad_y.double())
    assert got[1].shape == (4, 16, 1, 1) and got[3].shape == (16, 4, 1, 1)
    assert_close_to_reference(y, y_ref, name="y")
    for name, g, r in zip(("x", "w1", "b1", "w2", "b2"), got, want):
        assert_close_to_reference(g, r, name=f"grad_{name}")


def test_weight_gradients_keep_the_weights_strides():
    # A channels_last model's 1x1 SE weights have strides (C, 1, C, C): a gradient in other strides
    # costs AccumulateGrad a copy and makes DDP warn that they do not match its bucket views.
    x, w1, b1, w2, b2 = make_inputs(2, 16, 5, 5, 4, conv_weights=True)
    w1, w2 = (torch.nn.Conv2d(*w.shape[1::-1], 1).to(memory_format=torch.channels_last).weight.detach().copy_(w)
              for w in (w1, w2))  # as model.to(memory_format=torch.channels_last) leaves them
    assert w1.stride() == (16, 1, 16, 16)
    leaves = [t.requires_grad_() for t in (x, w1, b1, w2, b2)]
    squeeze_excite(*leaves).sum().backward()
    assert w1.grad.stride() == w1.stride() and w2.grad.stride() == w2.stride()
    grad_y = torch.randn(x.shape).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(BACKWARD_OP, [grad_y, *(t.detach() for t in leaves)],
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_matches_an_se_module_built_from_convs():
    channels, hidden = 32, 8
    fc1, fc2 = torch.nn.Conv2d(channels, hidden, 1), torch.nn.Conv2d(hidden, channels, 1)
    x = torch.randn(2, channels, 7, 7).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = x * torch.sigmoid(fc2(torch.relu(fc1(x.mean((2, 3), keepdim=True)))))
        y = squeeze_excite(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
    torch.testing.assert_close(y, expected, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("conv_weights", [False, True])
def test_gradcheck(layout, conv_weights):
    inputs = make_inputs(2, 6, 3, 5, 3, dtype=torch.float64, layout=layout, conv_weights=conv_weights)
    leaves = [t.requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(squeeze_excite, leaves)


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("layout", ["channels_last", "nchw", "strided"])
def test_opcheck_forward(requires_grad, layout):
    inputs = make_inputs(2, 12, 4, 5, 3, layout=layout)
    args = [t.requires_grad_(requires_grad) for t in inputs]
    torch.library.opcheck(OP, args)


@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("conv_weights", [False, True])
def test_opcheck_backward(layout, conv_weights):
    inputs = make_inputs(2, 12, 4, 5, 3, layout=layout, conv_weights=conv_weights)
    grad_y = torch.randn(inputs[0].shape).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(BACKWARD_OP, [grad_y, *inputs],
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_double_backward_is_refused():
    inputs = make_inputs(1, 8, 3, 3, 2, dtype=torch.float64)
    leaves = [t.requires_grad_() for t in inputs]
    y = squeeze_excite(*leaves)
    (dx,) = torch.autograd.grad(y.sum(), leaves[0], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        dx.sum().backward()


def test_empty_batch():
    inputs = make_inputs(0, 8, 3, 3, 2)
    leaves = [t.requires_grad_() for t in inputs]
    y = squeeze_excite(*leaves)
    assert y.shape == (0, 8, 3, 3)
    got = torch.autograd.grad(y.sum(), leaves)
    assert all(g.shape == t.shape and not g.any() for g, t in zip(got, leaves))


def test_compiles_fullgraph_for_training():
    inputs = make_inputs(2, 16, 6, 6, 4)
    leaves = [t.requires_grad_() for t in inputs]
    compiled = torch.compile(lambda *a: squeeze_excite(*a).square().sum(), fullgraph=True,
                             backend="aot_eager")
    got = torch.autograd.grad(compiled(*leaves), leaves)
    want = torch.autograd.grad(squeeze_excite(*leaves).square().sum(), leaves)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


# ---- bad input ---------------------------------------------------------------------------

def _bad(**change):
    x, w1, b1, w2, b2 = make_inputs(2, 8, 4, 4, 2)
    args = dict(x=x, w1=w1, b1=b1, w2=w2, b2=b2)
    args.update(change)
    return args


BAD_INPUTS = {
    "x 3-D": (_bad(x=torch.randn(8, 4, 4)), "x must be 4-D"),
    "x integer": (_bad(x=torch.ones(2, 8, 4, 4, dtype=torch.int32)), "x must be float32"),
    "x no pixels": (_bad(x=torch.randn(2, 8, 0, 4)), "at least one channel and one pixel"),
    "w1 wrong channels": (_bad(w1=torch.randn(2, 7)), r"w1 must have shape \[2, 8\]"),
    "w1 3x3": (_bad(w1=torch.randn(2, 8, 3, 3)), r"w1 must have shape \[2, 8\]"),
    "b1 wrong length": (_bad(b1=torch.randn(3)), r"b1 must have shape \[2\]"),
    "w2 transposed": (_bad(w2=torch.randn(2, 8)), r"w2 must have shape \[8, 2\]"),
    "b2 wrong length": (_bad(b2=torch.randn(2)), r"b2 must have shape \[8\]"),
    "w1 other dtype": (_bad(w1=torch.randn(2, 8, dtype=torch.float64)), "w1 must have x's dtype"),
    "b2 other dtype": (_bad(b2=torch.randn(8, dtype=torch.bfloat16)), "b2 must have x's dtype"),
    "w2 other device": (_bad(w2=torch.randn(8, 2, device="meta")), "w2 must be on x's device"),
    "b1 not a tensor": (_bad(b1=[0.0, 0.0]), "b1 must be a Tensor"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=str)
def test_bad_input_names_the_argument(case):
    args, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        squeeze_excite(**args)


@pytest.mark.parametrize("case", ["x 3-D", "w1 wrong channels", "b1 wrong length", "w2 transposed",
                                  "b2 wrong length", "w1 other dtype"], ids=str)
def test_operator_called_directly_rejects_bad_input(case):
    # Callers that skip the Python checks still get an error, never a crash or a bad write.
    args, _ = BAD_INPUTS[case]
    name = case.split()[0]
    with pytest.raises(RuntimeError, match=name):
        OP(args["x"], args["w1"], args["b1"], args["w2"], args["b2"])


def test_backward_operator_rejects_wrong_grad_shape():
    x, w1, b1, w2, b2 = make_inputs(2, 8, 4, 4, 2)
    with pytest.raises(RuntimeError, match="grad_y must have x's shape"):
        BACKWARD_OP(torch.randn(2, 8, 4, 5), x, w1, b1, w2, b2)
