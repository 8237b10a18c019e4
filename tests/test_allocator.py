"""regnet_ext.allocator.tune_malloc: applies on glibc, refuses bad values."""
import platform

import pytest

from regnet_ext.allocator import tune_malloc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_tune_malloc_is_accepted_by_glibc():
    assert tune_malloc() is True


@pytest.mark.parametrize("kwargs", [dict(mmap_threshold=0), dict(trim_threshold=2**31), dict(mmap_threshold=1.5)])
def test_tune_malloc_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match="tune_malloc"):
        tune_malloc(**kwargs)
