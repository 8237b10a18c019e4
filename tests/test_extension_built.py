"""A missing or broken build must fail the suite, never make it skip quietly."""
from regnet_ext import _extension


def test_compiled_extension_loads():
    _extension.require()
    assert _extension.load()
