"""regnet_ext.tolerances' helpers that the CUDA tests, selfcheck and the demo rely on."""
import pytest
import torch

from regnet_ext.tolerances import full_float32, relu_with_mask


def test_full_float32_turns_tf32_off_and_restores_the_flags_even_on_error():
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, True
        with pytest.raises(RuntimeError, match="inside"):
            with full_float32():
                assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
                raise RuntimeError("inside")
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


def test_relu_with_mask_takes_the_masks_branch_and_its_gradient():
    y = torch.tensor([-2.0, -1e-4, 1e-4, 3.0], dtype=torch.float64, requires_grad=True)
    assert torch.equal(relu_with_mask(y), torch.relu(y))
    # The tested result rounded the second value up to a positive and the third down to zero.
    mask = torch.tensor([False, True, False, True])
    out = relu_with_mask(y, mask)
    assert torch.equal(out, torch.tensor([0.0, -1e-4, 0.0, 3.0], dtype=torch.float64))
    out.sum().backward()
    assert torch.equal(y.grad, torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64))
