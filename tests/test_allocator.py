"""regnet_ext.allocator.tune_malloc: applies on glibc, refuses bad values, and with
use_mmap=False serves even the largest blocks again without fresh page faults."""
import platform
import resource
import subprocess
import sys

import pytest

from regnet_ext.allocator import tune_malloc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_tune_malloc_is_accepted_by_glibc():
    assert tune_malloc() is True


@pytest.mark.parametrize("kwargs", [dict(mmap_threshold=0), dict(trim_threshold=2**31), dict(mmap_threshold=1.5)])
def test_tune_malloc_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match="tune_malloc"):
        tune_malloc(**kwargs)


FAULTS_OF_A_LAYER_CHAIN = """
import resource, sys, torch
from regnet_ext.allocator import tune_malloc
if sys.argv[1] == "heap-only":
    assert tune_malloc(use_mmap=False)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counts = []
for _ in range(8):
    before = faults()
    x = torch.ones(16 << 20)  # 64 MiB: above glibc's largest mmap threshold (32 MiB)
    for _ in range(4):
        x = x * 2  # a new 64 MiB result while the old one is alive, like a network's layers
    del x
    counts.append(faults() - before)
print(sum(counts[4:]))  # the heap settles within about three chains
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_use_mmap_false_reuses_blocks_above_the_mmap_threshold():
    # In a child process: the settings are process-wide and would outlive this test.
    def faults(mode):  # faults of the last four of eight chains
        run = subprocess.run([sys.executable, "-c", FAULTS_OF_A_LAYER_CHAIN, mode],
                             capture_output=True, text=True, check=True)
        return float(run.stdout.split()[-1])

    pages = (64 << 20) // resource.getpagesize()
    assert faults("default") > 16 * pages  # every 64 MiB result on fresh pages: ~20 x pages
    # Freed blocks served again; now and then a fresh block or two (seen: 0, 1 and, in one CI run,
    # exactly 2 x pages), far from the default's ~20.
    assert faults("heap-only") <= 4 * pages


def test_tune_malloc_rejects_a_non_bool_use_mmap():
    with pytest.raises(ValueError, match="use_mmap"):
        tune_malloc(use_mmap="no")
