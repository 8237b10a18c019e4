"""benchmarks/compare.py: matching rows of two result files, the table, the flags and the exit
status (on two real --quick outputs of bench_kernels, and on small hand-written results)."""
import json

import pytest
import torch

import benchmark_scripts


def _compare():
    return benchmark_scripts.load("compare")


def _write(path, doc):
    path.write_text(json.dumps(doc))
    return str(path)


def _kernel_row(label, ours_ms, eager_ms, op="conv_bn_act", mode="eval"):
    return {"op": op, "mode": mode, "label": label, "median_ms": {"ours": ours_ms, "eager": eager_ms},
            "speedup": {"vs_eager": eager_ms / ours_ms}}


def _kernels_doc(rows, threads=2, torch_version="2.14.1"):
    return {"benchmark": "kernels", "machine": {"cpu": "AMD EPYC", "threads": threads,
                                                "torch": torch_version}, "rows": rows}


def _line_of(out, label):
    (line,) = [line for line in out.splitlines() if label in line]
    return line


@pytest.fixture(scope="module")
def quick_kernel_results(tmp_path_factory):
    """Two real bench_kernels --quick outputs: OLD with eval and train rows in nhwc, NEW with
    eval rows in nhwc and nchw (so each has rows the other lacks)."""
    bench = benchmark_scripts.load("bench_kernels")
    folder = tmp_path_factory.mktemp("quick")
    threads = torch.get_num_threads()
    try:
        for name, extra in (("old", []), ("new", ["--modes", "eval", "--stock-layouts", "nhwc", "nchw"])):
            argv = ["--quick", "--no-compile", "--threads", "1", "--out", str(folder / name)] + extra
            assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return folder / "old.json", folder / "new.json"


@pytest.mark.slow
def test_two_quick_kernel_results(quick_kernel_results, capsys):
    old_path, new_path = quick_kernel_results
    assert _compare().main([str(old_path), str(new_path)]) == 0
    out = capsys.readouterr().out
    old, new = (json.loads(p.read_text()) for p in quick_kernel_results)
    assert "old ours ms" in out and "new ours ms" in out and "old x eager" in out
    new_rows = {(r["op"], r["mode"], r["label"]): r for r in new["rows"]}
    both = [r for r in old["rows"] if (r["op"], r["mode"], r["label"]) in new_rows]
    assert both and all(r["mode"] == "eval" for r in both)
    for r in both:
        a, b = r["median_ms"]["ours"], new_rows[(r["op"], r["mode"], r["label"])]["median_ms"]["ours"]
        line = _line_of(out, f"{r['op']} eval {r['label']}  ")
        assert f"{a:.3f}" in line and f"{b:.3f}" in line and f"{a / b - 1:+.1%}" in line
    assert f"{len(both)} rows in both files" in out
    only_old, only_new = out.split("only in OLD")[1].split("only in NEW")
    train_rows = [r for r in old["rows"] if r["mode"] == "train"]
    assert f"{len(train_rows)} rows" in only_old
    assert all(f"{r['op']} train {r['label']}" in only_old for r in train_rows)
    nchw_rows = [r for r in new["rows"] if r["stock_layout"] == "nchw"]
    assert nchw_rows and all(f"{r['op']} eval {r['label']}" in only_new for r in nchw_rows)


def test_flags_rows_beyond_the_threshold(tmp_path, capsys):
    old = _write(tmp_path / "old.json", _kernels_doc([
        _kernel_row("slower", 1.0, 2.0), _kernel_row("faster", 1.0, 2.0), _kernel_row("steady", 1.0, 2.0)]))
    new = _write(tmp_path / "new.json", _kernels_doc([
        _kernel_row("slower", 2.0, 2.0), _kernel_row("faster", 0.5, 2.0), _kernel_row("steady", 1.01, 2.0)]))
    assert _compare().main([old, new, "--threshold", "0.05"]) == 0
    out = capsys.readouterr().out
    # old ms, new ms, speed change (+ is faster), old and new x eager, flag
    assert _line_of(out, "eval slower").split()[-6:] == ["1.000", "2.000", "-50.0%", "2.00", "1.00", "SLOWER"]
    assert _line_of(out, "eval faster").split()[-6:] == ["1.000", "0.500", "+100.0%", "2.00", "4.00", "faster"]
    assert _line_of(out, "eval steady").split()[-5:] == ["1.000", "1.010", "-1.0%", "2.00", "1.98"]
    assert "3 rows in both files: 1 slower and 1 faster by more than 5%" in out
    assert "warning" not in out and "only in" not in out
    # A looser threshold flags nothing.
    assert _compare().main([old, new, "--threshold", "2"]) == 0
    assert "0 slower and 0 faster by more than 200%" in capsys.readouterr().out


def test_warns_when_the_machines_differ(tmp_path, capsys):
    old = _write(tmp_path / "old.json", _kernels_doc([_kernel_row("a", 1.0, 1.0)], threads=1))
    new_doc = _kernels_doc([_kernel_row("a", 1.0, 1.0)], threads=2, torch_version="2.15.0")
    new_doc["machine"].update(device="cuda", gpu="NVIDIA H100")
    new = _write(tmp_path / "new.json", new_doc)
    assert _compare().main([old, new]) == 0
    warning = _line_of(capsys.readouterr().out, "warning")
    for change in ("threads 1 -> 2", "torch 2.14.1 -> 2.15.0", "device cpu -> cuda", "gpu - -> NVIDIA H100"):
        assert change in warning


def test_error_rows_are_shown_not_compared(tmp_path, capsys):
    old = _write(tmp_path / "old.json", _kernels_doc([_kernel_row("a", 1.0, 1.0)]))
    broken = {"op": "conv_bn_act", "mode": "eval", "label": "a", "error": "RuntimeError: boom"}
    new = _write(tmp_path / "new.json", _kernels_doc([broken]))
    assert _compare().main([old, new]) == 0
    out = capsys.readouterr().out
    assert _line_of(out, "conv_bn_act eval a").split()[-1] == "error"
    assert "1 with an error" in out


def test_model_and_fuse_results_match_by_model_variant_and_shape(tmp_path, capsys):
    def models_doc(images_per_s):
        variants = {"stock": {"available": True, "infer_images_per_s": images_per_s, "infer_speedup": 1.5},
                    "fused": {"available": False, "reason": "no extension"}}
        return {"benchmark": "bench_models", "batch": 8, "machine": {"cpu": "x", "threads": 2, "torch": "t"},
                "groups": [{"models": {"RegNetY-400MF": {"resolution": 224, "variants": variants}}}]}

    old = _write(tmp_path / "old.json", models_doc(100.0))
    new = _write(tmp_path / "new.json", {**models_doc(80.0), "dtype": "bfloat16"})
    assert _compare().main([old, new]) == 0
    out = capsys.readouterr().out
    assert _line_of(out, "RegNetY-400MF stock b8x224 infer").split()[-6:] == [
        "100.000", "80.000", "-20.0%", "1.50", "1.50", "SLOWER"]
    assert "dtype float32 -> bfloat16" in _line_of(out, "warning")

    def fuse_doc(fused):
        results = [{"model": "RegNetX-400MF", "batch": 4, "resolution": 64, "mode": "inference",
                    "variant": v, "images_per_s": ips} for v, ips in (("eager", 100.0), ("fused", fused))]
        ratios = [{"model": "RegNetX-400MF", "batch": 4, "resolution": 64, "mode": "inference",
                   "fused_vs": "eager", "ratio": fused / 100.0}]
        return {"benchmark": "bench_fuse", "cpu": "x", "threads": 2, "torch": "t", "results": results,
                "ratios": ratios}

    old = _write(tmp_path / "fold.json", fuse_doc(110.0))
    new = _write(tmp_path / "fnew.json", fuse_doc(132.0))
    assert _compare().main([old, new]) == 0
    out = capsys.readouterr().out
    assert _line_of(out, "RegNetX-400MF fused b4x64 inference").split()[-6:] == [
        "110.000", "132.000", "+20.0%", "1.10", "1.32", "faster"]
    assert _line_of(out, "RegNetX-400MF eager b4x64 inference").split()[-5:] == [
        "100.000", "100.000", "+0.0%", "-", "-"]


def test_different_benchmarks_are_refused(tmp_path, capsys):
    kernels = _write(tmp_path / "k.json", _kernels_doc([_kernel_row("a", 1.0, 1.0)]))
    models = _write(tmp_path / "m.json", {"benchmark": "bench_models", "batch": 8, "machine": {}, "groups": []})
    assert _compare().main([kernels, models]) == 2
    captured = capsys.readouterr()
    assert "different benchmarks ('kernels' and 'bench_models')" in captured.err
    assert captured.out == ""


def test_missing_unknown_and_malformed_inputs_exit_2(tmp_path, capsys):
    compare = _compare()
    kernels = _write(tmp_path / "k.json", _kernels_doc([_kernel_row("a", 1.0, 1.0)]))
    missing = str(tmp_path / "missing.json")
    assert compare.main([kernels, missing]) == 2
    assert f"{missing}: cannot read it" in capsys.readouterr().err
    unknown = _write(tmp_path / "traffic.json", {"device": "H100", "models": []})
    assert compare.main([unknown, kernels]) == 2
    assert "not a result this script knows" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert compare.main([kernels, str(tmp_path / "bad.json")]) == 2
    assert "not JSON" in capsys.readouterr().err
    no_rows = _write(tmp_path / "no_rows.json", {"benchmark": "kernels", "machine": {}})
    assert compare.main([kernels, no_rows]) == 2
    assert "without the expected fields" in capsys.readouterr().err


def test_command_line_exit_status(tmp_path):
    kernels = _write(tmp_path / "k.json", _kernels_doc([_kernel_row("a", 1.0, 1.0)]))
    done = benchmark_scripts.run("compare", kernels, kernels)
    assert done.returncode == 0 and "1 rows in both files" in done.stdout
    done = benchmark_scripts.run("compare", kernels, tmp_path / "missing.json")
    assert done.returncode == 2 and "Traceback" not in done.stderr and "cannot read it" in done.stderr
