"""torch.fx symbolic tracing of a fused model, as torchvision's create_feature_extractor does to
build detection backbones: each fused module is one call_module node (a leaf, like a torch.nn
layer), so stage outputs can be returned, equal to the fused model's own intermediate outputs,
and the extractor holds (and trains) the model's own Parameters."""
import pytest
import torch

from regnet_ext.nn import FusedConvBNAct, FusedResBottleneck
from test_fuse import images, make_pair

torchvision = pytest.importorskip("torchvision")
from torchvision.models.feature_extraction import create_feature_extractor  # noqa: E402

STAGES = {
    "torchvision_regnet_y_400mf": {"stem": "c1", "trunk_output.block1": "c2", "trunk_output.block2": "c3",
                                   "trunk_output.block3": "c4", "trunk_output.block4": "c5"},
    "ours_regnety_400mf": {"stem": "c1", "s1": "c2", "s2": "c3", "s3": "c4", "s4": "c5", "head": "logits"},
}


def _eager_outputs(model, nodes, x):
    """The outputs of the modules named in `nodes`, by forward hooks on an eager call."""
    out = {}
    handles = [model.get_submodule(path).register_forward_hook(
        lambda _m, _i, y, key=key: out.__setitem__(key, y)) for path, key in nodes.items()]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return out


@pytest.mark.parametrize("name", STAGES)
def test_create_feature_extractor_returns_the_fused_models_stage_outputs(name):
    _, fused = make_pair(name)
    nodes = STAGES[name]
    extractor = create_feature_extractor(fused.eval(), return_nodes=nodes)
    called = {n.target for n in extractor.graph.nodes if n.op == "call_module"}
    assert {p for p, m in fused.named_modules() if isinstance(m, FusedResBottleneck)} <= called
    x = images(2, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected, actual = _eager_outputs(fused, nodes, x), extractor(x)
    assert list(actual) == list(nodes.values())
    for key, y in actual.items():
        assert torch.equal(y, expected[key]), key
    # The extractor holds the fused model's own modules: the same Parameters, trained in train mode.
    assert {id(p) for p in extractor.parameters()} <= {id(p) for p in fused.parameters()}
    extractor.train()
    features = extractor(images(2, 64))
    sum(f.float().sum() for f in features.values()).backward()
    stem = next(m for m in extractor.modules() if isinstance(m, FusedConvBNAct))
    assert stem.conv_module.weight.grad is not None


def test_symbolic_trace_of_a_fused_model_gives_its_outputs():
    _, fused = make_pair("ours_regnety_400mf")
    traced = torch.fx.symbolic_trace(fused.eval())
    x = images(2, 64)
    with torch.no_grad():
        assert torch.equal(traced(x), fused(x))


def test_tracing_a_fused_block_alone_is_refused_with_a_clear_error():
    _, fused = make_pair("ours_regnety_400mf")
    with pytest.raises(TypeError, match="cannot trace a FusedResBottleneck alone"):
        torch.fx.symbolic_trace(fused.s1.b1)
