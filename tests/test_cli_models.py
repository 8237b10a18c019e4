"""`regnet-ext models`: the table, the JSON and their options."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from regnet_ext.cli import main

GOLDEN = json.loads((Path(__file__).parent / "data" / "regnet_golden.json").read_text())
KEYS = ["name", "depths", "widths", "group_widths", "flops", "params", "acts"]


def _json(capsys, *argv):
    assert main(["models", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_lists_every_standard_model_with_golden_figures(capsys):
    rows = _json(capsys)
    assert [list(r) for r in rows] == [KEYS] * 24
    assert rows == [{k: m[k] for k in KEYS} for m in GOLDEN["models"]]


def test_json_options(capsys):
    rows = _json(capsys, "--name", "regnet_y_800mf", "regnetx_004", "--rounding", "torchvision")
    assert [r["name"] for r in rows] == ["RegNetY-800MF", "RegNetX-400MF"]
    for row in rows:
        tv = GOLDEN["torchvision"][row["name"]]
        assert (row["depths"], row["widths"], row["group_widths"], row["params"]) == (
            tv["depths"], tv["widths"], tv["group_widths"], tv["num_params"])
    small = _json(capsys, "--name", "RegNetX-200MF", "--resolution", "112")[0]
    full = GOLDEN["models"][0]
    assert small["params"] == full["params"]
    assert small["flops"] < full["flops"] and small["acts"] < full["acts"]


def test_table_has_one_line_per_model(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["model", "depths"]
    body = [line for line in out if line.startswith("RegNet")]
    assert [line.split()[0] for line in body] == [m["name"] for m in GOLDEN["models"]]
    assert "1 3 6 6" in body[13] and "48 104 208 440" in body[13]  # RegNetY-400MF


@pytest.mark.parametrize("argv, message", [
    (["--name", "RegNetZ-400MF"], "regnet-ext models: --name: unknown RegNet model 'RegNetZ-400MF'"),
    (["--resolution", "0"], "regnet-ext models: --resolution must be >= 1"),
])
def test_bad_arguments_exit_with_a_message(capsys, argv, message):
    # Exit status 2 as for argparse's own errors (it was 1: SystemExit with a message).
    assert main(["models", *argv]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and not captured.out


def test_runs_as_a_module():
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "regnet_ext", "models", "--json", "--name",
                           "RegNetY-16GF"], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    g = {m["name"]: m for m in GOLDEN["models"]}["RegNetY-16GF"]
    assert json.loads(done.stdout) == [{k: g[k] for k in KEYS}]
