"""`regnet-ext` where the compiled extension is missing (a subprocess in which regnet_ext._C
cannot be imported, as in a user's install without the build), the top-level --version and
Ctrl-C."""
import subprocess
import sys

import pytest

import regnet_ext
from regnet_ext.cli import main


# A user's install without the build: every import of regnet_ext._C fails (None in sys.modules
# stops it whichever finder would have found it, an editable install's too, which a copy of the
# package on sys.path would not).
WITHOUT_C = "import sys; sys.modules['regnet_ext._C'] = None\n"


def run_without_extension(code):
    return subprocess.run([sys.executable, "-c", WITHOUT_C + code], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def without_extension():
    """Runs `python -m regnet_ext ARGS` where the compiled module cannot be imported."""
    def run(*argv):
        return run_without_extension(f"import runpy; sys.argv = ['regnet-ext', *{list(argv)!r}]\n"
                                     "runpy.run_module('regnet_ext', run_name='__main__', alter_sys=True)\n")
    return run


def test_fuse_without_the_extension_says_how_to_build_it():
    done = run_without_extension("import torch, regnet_ext\n"
                                 "try:\n    regnet_ext.fuse(torch.nn.Linear(2, 2))\n"
                                 "except ImportError as exc:\n    print(exc)\n")
    assert done.returncode == 0, done.stderr
    assert "compiled operators are not available" in done.stdout and "make build" in done.stdout


@pytest.mark.parametrize("argv, message", [
    (["train", "--fused"], "regnet-ext train: error: --fused: the fused kernels are not available"),
    (["profile", "--fused"], "regnet-ext profile: --fused: the fused kernels are not available"),
    (["demo"], "regnet-ext demo: the fused kernels are not available"),
])
def test_commands_needing_fuse_fail_with_one_line(without_extension, argv, message):
    done = without_extension(*argv)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr


def test_profile_plot_falls_back_to_stock_only(without_extension, tmp_path):
    png = tmp_path / "p.png"
    done = without_extension("profile", "--model", "RegNetY-200MF", "--batch", "1",
                             "--resolution", "32", "--iters", "1", "--warmup", "0",
                             "--plot", str(png), "--no-tune-malloc")
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("regnet-ext profile: --plot: profiling stock only;")
    assert done.stderr.count("\n") == 1, done.stderr
    assert "stock / fused" not in done.stdout and f"plot written to {png}" in done.stdout
    assert png.stat().st_size > 0


def test_version_prints_the_version_info_reports(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"regnet-ext {regnet_ext.__version__}\n"


def test_ctrl_c_ends_a_command_with_one_line(monkeypatch, capsys):
    from regnet_ext.commands import info

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(info, "run", interrupted)
    assert main(["info"]) == 130
    assert capsys.readouterr().err == "\nregnet-ext info: interrupted\n"
