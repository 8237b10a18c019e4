"""Imports a script from benchmarks/ (not a package) for the tests of its --quick mode, or runs it
in a child process where the test needs its exit status and stderr as a user sees them."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(name, *args, hide_gpus=False):
    """`python benchmarks/<name>.py args...` -> CompletedProcess (text stdout / stderr).
    hide_gpus: CUDA_VISIBLE_DEVICES="" makes torch see no GPU, also on a machine with one."""
    env = dict(os.environ)
    if hide_gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)


def assert_usage_error(done, message, unwritten):
    """A run refused as a user error: exit 2, `message` on stderr, no traceback, no output file."""
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not unwritten.exists()
