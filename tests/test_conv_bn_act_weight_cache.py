"""The eval operator's cache of folded, oneDNN-packed weights (csrc/cpu/folded_weight_cache.h):
every call equals the reference however the parameters change between calls (in place, new
tensors at possibly reused addresses, other input sizes, inference tensors, several threads)."""
import os
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F

from regnet_ext.ops import conv_bn_act

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                reason="the cache holds oneDNN-packed weights")


def _params(c_in=16, c_out=24, k=3, groups=2, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c_out, c_in // groups, k, k, generator=g) * 0.3
    return dict(weight=w.to(dtype).contiguous(memory_format=torch.channels_last),
                bn_weight=(torch.rand(c_out, generator=g) + 0.5).to(dtype),
                bn_bias=(torch.rand(c_out, generator=g) - 0.5).to(dtype),
                running_mean=(torch.rand(c_out, generator=g) - 0.5).to(dtype),
                running_var=(torch.rand(c_out, generator=g) + 0.5).to(dtype),
                bias=(0.1 * torch.randn(c_out, generator=g)).to(dtype))


def _x(n=2, c=16, size=10, seed=1, dtype=torch.float32):
    x = torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return x.contiguous(memory_format=torch.channels_last)


def _reference(x, p, groups=2, residual=None, relu=True):
    d = {k: v.double() for k, v in p.items()}
    y = F.conv2d(x.double(), d["weight"], d["bias"], 1, d["weight"].shape[-1] // 2, 1, groups)
    y = F.batch_norm(y, d["running_mean"], d["running_var"], d["bn_weight"], d["bn_bias"], False, 0.0, 1e-5)
    if residual is not None:
        y = y + residual.double()
    return F.relu(y) if relu else y


def _ours(x, p, groups=2, residual=None, relu=True):
    return conv_bn_act(x, p["weight"], p["bn_weight"], p["bn_bias"], p["running_mean"], p["running_var"],
                       bias=p["bias"], groups=groups, training=False, relu=relu, residual=residual)


def _check(actual, expected, rel=2e-5, what=""):
    err = (actual.double() - expected).abs().max().item()
    assert err <= rel * expected.abs().max().item() + 1e-6, f"{what}: max error {err:.3g}"


@pytest.mark.parametrize("residual", [False, True])
def test_repeated_calls_match_the_reference(residual):
    p, x = _params(), _x()
    r = _x(c=24, seed=5) if residual else None
    expected = _reference(x, p, residual=r)
    for call in range(4):
        _check(_ours(x, p, residual=r), expected, what=f"call {call}")


def test_bfloat16_repeated_calls():
    p, x = _params(dtype=torch.bfloat16), _x(dtype=torch.bfloat16)
    expected = _reference(x, p)
    first = _ours(x, p)
    assert first.dtype == torch.bfloat16
    for _ in range(3):
        assert torch.equal(_ours(x, p), first)
    _check(first, expected, rel=3e-2, what="bfloat16")


@pytest.mark.parametrize("name", ["weight", "bias", "bn_weight", "bn_bias", "running_mean", "running_var"])
def test_in_place_changes_of_any_folded_tensor_are_seen(name):
    p, x = _params(), _x()
    _ours(x, p)  # cached
    with torch.no_grad():
        p[name].mul_(1.5).add_(0.25)
    _check(_ours(x, p), _reference(x, p), what=f"after an in-place edit of {name}")
    p[name].data.copy_(p[name] * 0.5)  # through .data the version does not move: the documented gap
    p[name].add_(0.0)  # ...until any in-place op on the tensor itself
    _check(_ours(x, p), _reference(x, p), what=f"after a version bump of {name}")


def test_new_tensors_at_reused_addresses_never_hit_a_stale_entry():
    x = _x()
    for seed in range(40):
        p = _params(seed=seed)  # the previous seed's tensors are freed; addresses may repeat
        _check(_ours(x, p), _reference(x, p), what=f"seed {seed}")


def test_other_input_sizes_and_batches():
    p = _params()
    for n, size in ((1, 10), (3, 10), (2, 7), (2, 16), (1, 10)):
        x = _x(n=n, size=size, seed=n * 100 + size)
        _check(_ours(x, p), _reference(x, p), what=f"batch {n}, {size}px")


def test_inference_tensors_and_autograd():
    with torch.inference_mode():
        p, x = _params(), _x()
        for _ in range(2):
            _check(_ours(x, p), _reference(x, p), what="inference tensors")
    p, x = _params(), _x()
    learned = ("weight", "bias", "bn_weight", "bn_bias")
    for k in learned:
        p[k].requires_grad_()
    _ours(x, p)  # fills the cache
    y = _ours(x, p)
    y.square().sum().backward()
    q = {k: v.detach().double().requires_grad_(k in learned) for k, v in p.items()}
    _reference(x, q).square().sum().backward()
    for k in learned:
        _check(p[k].grad, q[k].grad, rel=1e-4, what=f"gradient of {k} after a cached forward")


def test_threads_share_the_cache_safely():
    params = [_params(seed=s) for s in range(4)]
    x = _x()
    expected = [_reference(x, p) for p in params]
    errors = []

    def work(offset):
        try:
            for i in range(40):
                j = (i + offset) % len(params)
                _check(_ours(x, params[j]), expected[j], what=f"thread {offset}, params {j}")
        except AssertionError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_the_cache_can_be_turned_off():
    code = ("import sys; sys.path.insert(0, 'tests'); import test_conv_bn_act_weight_cache as t; "
            "p, x = t._params(), t._x(); e = t._reference(x, p); "
            "[t._check(t._ours(x, p), e) for _ in range(3)]; print('ok')")
    env = dict(os.environ, REGNET_EXT_CPU_WEIGHT_CACHE="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def _resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads Linux's /proc")
def test_a_weight_keeps_one_entry_per_call_shape():
    # Frozen-BN fine-tuning calls eval with a new weight version every step: the cache must not
    # fill with dead versions. A 1 MB weight changed 300 times would otherwise keep 300 packed
    # copies (the cache's own bound is 1 GiB).
    p, x = _params(c_in=256, c_out=1024, groups=1, k=1), _x(c=256, size=4)
    rss = _resident_bytes()
    for step in range(300):
        with torch.no_grad():
            p["weight"].add_(1e-3)
        _check(_ours(x, p, groups=1), _reference(x, p, groups=1), what=f"step {step}")
    grown = _resident_bytes() - rss
    assert grown < 100 * 2**20, f"resident memory grew by {grown / 2**20:.0f} MiB"


def _onednn_batches(c_in, size):
    """The batch sizes the cache holds oneDNN packings of a 1x1 weight with c_in inputs for."""
    from regnet_ext import _C
    return [shape[6] for layout, shape in _C.cpu_weight_cache_shapes()
            if layout == 0 and shape[:6] == (c_in, size, size, 1, 0, 1)]


def test_onednn_packings_are_per_batch_and_at_most_four_per_weight(monkeypatch):
    # oneDNN packs a weight for one input shape: a packing made at batch 1 and reused at batch 8
    # ran a RegNetY-400MF's 1x1 convs 6x slower. So the batch is part of the key (for oneDNN's
    # layout only), and each weight keeps its four most recent call shapes.
    monkeypatch.setenv("REGNET_EXT_CPU_CONV", "aten")  # (read per call) oneDNN for every conv
    p = _params(c_in=40, c_out=24, k=1, groups=1, seed=3)
    for n in (1, 8, 1, 2, 3, 4, 5):
        x = _x(n=n, c=40, size=6, seed=n)
        _check(_ours(x, p, groups=1), _reference(x, p, groups=1), what=f"batch {n}")
        if n == 8:
            assert sorted(_onednn_batches(40, 6)) == [1, 8]
    assert _onednn_batches(40, 6) == [2, 3, 4, 5]
