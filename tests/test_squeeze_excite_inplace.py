"""squeeze_excite_ (in place, CPU inference): the same result as squeeze_excite, written over x."""
import pytest
import torch

from regnet_ext.ops.squeeze_excite import squeeze_excite, squeeze_excite_
from test_squeeze_excite import BAD_INPUTS, make_inputs, reference
from tolerances import assert_close_to_reference

OP = torch.ops.regnet_ext.squeeze_excite_.default

# (N, C, H, W, C_se): per-sample schedule, pixel chunks at batch 1, the batch-wide schedule (a
# sample over 1 MB), a 1x1 image.
SHAPES = [(3, 48, 14, 14, 12), (1, 37, 7, 13, 5), (2, 64, 96, 97, 16), (4, 8, 1, 1, 2)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layout", ["channels_last", "nchw", "strided"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_overwrites_x_with_what_squeeze_excite_returns(shape, layout, threads):
    x, w1, b1, w2, b2 = make_inputs(*shape, layout=layout)
    expected = squeeze_excite(x, w1, b1, w2, b2)
    storage, strides = x.data_ptr(), x.stride()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = squeeze_excite_(x, w1, b1, w2, b2)
    finally:
        torch.set_num_threads(previous)
    assert result is x and x.data_ptr() == storage and x.stride() == strides
    torch.testing.assert_close(x, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_matches_the_float64_reference(dtype):
    inputs = make_inputs(2, 24, 9, 7, 6, dtype=dtype)
    want = reference(*[t.double() for t in inputs])
    plain = reference(*inputs) if dtype == torch.bfloat16 else None  # sets bfloat16's tolerance
    assert_close_to_reference(squeeze_excite_(*inputs), want, plain_torch=plain, name="y")


def test_opcheck():
    torch.library.opcheck(OP, make_inputs(2, 12, 4, 5, 3))


def test_refuses_autograd():
    x, w1, b1, w2, b2 = make_inputs(1, 8, 3, 3, 2)
    w1.requires_grad_()
    with pytest.raises(RuntimeError, match="no autograd"):
        squeeze_excite_(x, w1, b1, w2, b2)
    with torch.no_grad():
        squeeze_excite_(x, w1, b1, w2, b2)


def test_refuses_a_non_cpu_tensor():
    x, w1, b1, w2, b2 = make_inputs(1, 8, 3, 3, 2)
    with pytest.raises(ValueError, match="x must be a CPU tensor"):
        squeeze_excite_(x.to("meta"), w1, b1, w2, b2)


@pytest.mark.parametrize("case", ["x 3-D", "x no pixels", "w1 wrong channels", "b1 wrong length", "w2 transposed",
                                  "b2 other dtype", "b1 not a tensor"])
def test_bad_input_names_the_argument_and_leaves_x_alone(case):
    args, message = BAD_INPUTS[case]
    before = args["x"].clone()
    with pytest.raises(ValueError, match=message):
        squeeze_excite_(**args)
    torch.testing.assert_close(args["x"], before, rtol=0, atol=0)
