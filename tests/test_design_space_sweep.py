"""Sweeps: durable appends, resume after a kill, engines (local processes, submitit local)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from regnet_ext import design_space as ds
from regnet_ext.design_space import sweep as sweep_module
from regnet_ext.design_space.records import read_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiny trials: 1 block per stage of width 8-16, 16x16 digits, 128 training images, 1 epoch.
SETTINGS = dict(resolution=16, epochs=1, batch_size=32, train_subset=128, val_subset=64, seed=0)
TINY = ds.ANYNETX_A.replace(name="tiny", depth=(1, 1), width=(8, 16), group_widths=(8,),
                            bottleneck_ratios=(1,))


def _samples(n):
    return ds.sample(TINY, n, seed=0, resolution=16)


def _without_time(path):
    lines = []
    for record in read_records(path):
        assert record["train_time_s"] > 0
        record.pop("train_time_s")  # the one field a wall clock decides
        lines.append(json.dumps(record, sort_keys=True))
    return lines


def test_sweep_records_every_trial(tmp_path):
    out = tmp_path / "r.jsonl"
    records = ds.run_sweep(_samples(3), str(out), engine="inline", progress=False, **SETTINGS)
    assert [r["trial"] for r in records] == [0, 1, 2]
    on_disk = read_records(str(out))
    assert on_disk == records
    for r, s in zip(records, _samples(3)):
        assert r["spec"] == s.to_dict()["spec"] and r["flops"] == s.flops
        assert 0 <= r["top1_error"] <= 100 and r["settings"]["epochs"] == 1
        assert r["train"]["num_params"] > 0


def test_killed_sweep_resumes_to_the_same_file(tmp_path, monkeypatch):
    samples = _samples(6)
    ds.save_samples(samples, str(tmp_path / "s.jsonl"))
    reference = tmp_path / "reference.jsonl"
    ds.run_sweep(samples, str(reference), engine="inline", progress=False, **SETTINGS)

    out = tmp_path / "resumed.jsonl"
    cmd = [sys.executable, "-m", "regnet_ext", "space", "sweep", str(tmp_path / "s.jsonl"),
           "--out", str(out), "--engine", "inline", "--no-progress", "--resolution", "16",
           "--epochs", "1", "--batch-size", "32", "--train-subset", "128", "--val-subset", "64"]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and len(read_records(str(out))) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the sweep ended before it could be killed: " \
                                f"{proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    finished = read_records(str(out))
    assert 2 <= len(finished) < len(samples)
    # A write torn by the kill: half a record at the end of the file.
    with open(out, "a") as f:
        f.write('{"trial": 5, "spe')

    trained = []
    original = sweep_module.train_trial

    def counting(task):
        trained.append(task["trial"])
        return original(task)

    monkeypatch.setattr(sweep_module, "train_trial", counting)
    ds.run_sweep(samples, str(out), engine="inline", progress=False, **SETTINGS)
    assert sorted(trained) == sorted(set(range(6)) - {r["trial"] for r in finished})
    assert _without_time(out) == _without_time(reference)
    # Nothing left to do: a third run trains nothing and leaves the file as it is.
    before = out.read_bytes()
    trained.clear()
    ds.run_sweep(samples, str(out), engine="inline", progress=False, **SETTINGS)
    assert trained == [] and out.read_bytes() == before


def test_resume_refuses_a_different_sweep(tmp_path):
    out = tmp_path / "r.jsonl"
    samples = _samples(2)
    ds.run_sweep(samples[:1], str(out), engine="inline", progress=False, **SETTINGS)
    with pytest.raises(ValueError, match="other settings"):
        ds.run_sweep(samples[:1], str(out), engine="inline", progress=False,
                     **dict(SETTINGS, epochs=2))
    with pytest.raises(ValueError, match="another architecture"):
        ds.run_sweep(samples[1:], str(out), engine="inline", progress=False, **SETTINGS)
    with pytest.raises(ValueError, match="is a directory; expected a JSONL file path"):
        ds.run_sweep(samples[:1], str(tmp_path), engine="inline", progress=False, **SETTINGS)


@pytest.mark.slow
def test_local_processes_give_the_same_results_as_inline(tmp_path):
    samples = _samples(2)
    inline = ds.run_sweep(samples, str(tmp_path / "a.jsonl"), engine="inline", progress=False,
                          **SETTINGS)
    pooled = ds.run_sweep(samples, str(tmp_path / "b.jsonl"), engine="local", workers=2,
                          progress=False, **SETTINGS)
    assert [r["top1_error"] for r in pooled] == [r["top1_error"] for r in inline]
    assert _without_time(tmp_path / "a.jsonl") == _without_time(tmp_path / "b.jsonl")


@pytest.mark.slow
def test_submitit_local_mode_runs_two_trials(tmp_path):
    pytest.importorskip("submitit", reason="the optional submitit engine is not installed")
    samples = _samples(2)
    out = tmp_path / "r.jsonl"
    records = ds.run_sweep(samples, str(out), engine="submitit", progress=False,
                           engine_options={"cluster": "local", "folder": str(tmp_path / "jobs"),
                                           "timeout_min": 10},
                           **SETTINGS)
    assert [r["trial"] for r in records] == [0, 1]
    assert len(read_records(str(out))) == 2
    inline = ds.run_sweep(samples, str(tmp_path / "inline.jsonl"), engine="inline",
                          progress=False, **SETTINGS)
    assert [r["top1_error"] for r in records] == [r["top1_error"] for r in inline]
    assert any((tmp_path / "jobs").iterdir())  # submitit kept its jobs' logs and pickles


def test_failed_trials_are_reported_and_retried(tmp_path):
    out = tmp_path / "r.jsonl"
    with pytest.raises(RuntimeError, match="2 of 2 trials failed"):
        ds.run_sweep(_samples(2), str(out), engine="inline", progress=False,
                     **dict(SETTINGS, dataset=str(tmp_path / "no-such-folder")))
    assert read_records(str(out)) == []


def _start_local_sweep(tmp_path, samples, epochs):
    """`regnet-ext space sweep` of `samples` with the local engine (2 workers) in a process group
    of its own, signalled as a whole, as a shell or a job scheduler stops a job: (process, out)."""
    ds.save_samples(samples, str(tmp_path / "s.jsonl"))
    out = tmp_path / "r.jsonl"
    cmd = [sys.executable, "-m", "regnet_ext", "space", "sweep", str(tmp_path / "s.jsonl"),
           "--out", str(out), "--engine", "local", "--workers", "2", "--no-progress",
           "--resolution", "16", "--epochs", str(epochs), "--batch-size", "32", "--train-subset", "128",
           "--val-subset", "64"]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # SIGINT's default action restored: a shell starts background jobs (a CI run launched with
    # `&`) with it ignored, and Python then installs no Ctrl-C handler at all.
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)), out


@pytest.mark.slow
def test_sigterm_stops_a_local_sweep_cleanly_and_it_resumes(tmp_path, monkeypatch):
    samples = _samples(16)  # every architecture of TINY: enough trials to be stopped midway
    proc, out = _start_local_sweep(tmp_path, samples, epochs=3)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not read_records(str(out)):
        time.sleep(0.02)
    assert proc.poll() is None, f"the sweep ended before it could be stopped: " \
                                f"{proc.stderr.read().decode()[-2000:]}"
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert "leaked" not in err.decode(), err.decode()  # the pool's semaphores were released
    assert proc.returncode == 128 + signal.SIGTERM
    finished = read_records(str(out))
    assert 1 <= len(finished) < len(samples)

    trained = []
    original = sweep_module.train_trial
    monkeypatch.setattr(sweep_module, "train_trial", lambda task: trained.append(task["trial"])
                        or original(task))
    settings = dict(SETTINGS, epochs=3)
    records = ds.run_sweep(samples, str(out), engine="inline", progress=False, **settings)
    assert sorted(trained) == sorted(set(range(16)) - {r["trial"] for r in finished})
    assert [r["trial"] for r in records] == list(range(16))


@pytest.mark.slow
def test_ctrl_c_stops_a_local_sweep_at_once_even_when_pressed_twice(tmp_path):
    # Trials of minutes: a sweep that waited for its running trials would take that long. (At 100
    # epochs, trials of about a minute elsewhere, two finished within the 8 s below on a 2-core
    # Intel Xeon VM, 2026-12-08, and the records were not empty.)
    proc, out = _start_local_sweep(tmp_path, _samples(4), epochs=2000)
    time.sleep(8)  # workers spawned and training
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    start = time.time()
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(1)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)  # a second Ctrl-C must not hang the sweep
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the interrupted sweep did not end")
    took, err = time.time() - start, err.decode()
    assert proc.returncode == 128 + signal.SIGINT and took < 25, (proc.returncode, took, err)
    assert "leaked" not in err and "Traceback" not in err, err
    assert read_records(str(out)) == []  # no trial had finished: all are redone on resume


def test_a_diverged_trial_is_recorded_with_maximal_error(tmp_path, monkeypatch):
    import regnet_ext.training
    from regnet_ext.training.loop import TrainingDiverged

    original = regnet_ext.training.fit

    def diverging(model, *args, seed, **kwargs):
        if seed == SETTINGS["seed"] + 1:  # trial 1
            raise TrainingDiverged("training diverged: the loss is nan (try a smaller lr)")
        return original(model, *args, seed=seed, **kwargs)

    monkeypatch.setattr(regnet_ext.training, "fit", diverging)
    out = tmp_path / "r.jsonl"
    records = ds.run_sweep(_samples(3), str(out), engine="inline", progress=False, **SETTINGS)
    assert read_records(str(out)) == records and [r["trial"] for r in records] == [0, 1, 2]
    assert records[1]["diverged"] is True and records[1]["top1_error"] == 100.0
    assert records[1]["train"]["num_params"] > 0 and records[1]["train_time_s"] >= 0
    assert "diverged" not in records[0] and records[0]["top1_error"] < 100
    assert all(r["sweep_trials"] == 3 for r in records)
    summary = ds.summarize(records)["tiny"]
    assert summary["n"] == 3 and summary["diverged"] == 1


def test_sweep_refuses_an_output_in_a_missing_folder_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_module, "train_trial", lambda task: pytest.fail("trained"))
    with pytest.raises(ValueError, match="out: the folder of .* does not exist"):
        ds.run_sweep(_samples(1), str(tmp_path / "nodir" / "r.jsonl"), engine="inline",
                     progress=False, **SETTINGS)


def test_the_package_docstring_runs_its_sweep_under_a_main_guard():
    # The local engine spawns its workers, which import the main script again: a script that
    # starts a sweep outside `if __name__ == "__main__":` fails (every worker dies).
    import ast
    import textwrap

    doc = ds.__doc__
    example = textwrap.dedent("\n".join(line for line in doc.splitlines()
                                        if line.startswith("    ") or not line.strip()))
    tree = ast.parse(example)
    guards = [node for node in tree.body if isinstance(node, ast.If)
              and ast.unparse(node.test) in ("__name__ == '__main__'", '__name__ == "__main__"')]
    guarded = {id(n) for g in guards for n in ast.walk(g)}
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and n.func.attr == "run_sweep"]
    assert calls and all(id(c) in guarded for c in calls), example
