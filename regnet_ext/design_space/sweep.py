"""Sweeps: train every sampled model for a short schedule and record its error.

Results go to a JSON Lines file, one record per trial, appended (and fsync'ed) the moment a trial
finishes. Re-running the same sweep on the same file resumes it: finished trials are kept and not
trained again, a line torn by a kill is dropped, and only the missing trials run. When every trial
is done the file is rewritten in trial order, so an interrupted-and-resumed sweep ends with the
same file as an uninterrupted one (up to each trial's wall-clock ``train_time_s``).
"""
import os
import sys
import time

import numpy as np

from .engines import make_engine
from .records import append_record, read_records, write_records
from .sample import Sample, spec_from_dict

TRAIN_FIELDS = ("top1_acc", "best_top1_acc", "epochs", "num_params")
DIVERGED_ERROR = 100.0  # top1_error recorded for a trial whose training diverged
_DATASETS = {}  # per worker process: (name, resolution, split) -> dataset, loaded once


def sweep_settings(*, dataset="digits", resolution=16, epochs=5, batch_size=32, lr=0.025,
                   weight_decay=5e-5, momentum=0.9, seed=0, train_subset=None, val_subset=None,
                   threads_per_trial=1):
    """The training settings every trial of a sweep shares (stored in each record).

    Defaults make a short schedule on the bundled digits (8x8 images, so 16x16 loses nothing):
    5 epochs of 45 steps, a model a few seconds to a few tens of seconds on one CPU core; lr is
    the recipe's 0.1 at batch 128 scaled linearly to batch 32."""
    for name, value in (("resolution", resolution), ("epochs", epochs),
                        ("batch_size", batch_size), ("threads_per_trial", threads_per_trial)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    for name, value in (("train_subset", train_subset), ("val_subset", val_subset)):
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name}: expected None or an integer >= 1, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr: expected > 0, got {lr!r}")
    if not (isinstance(dataset, str) and dataset):
        raise ValueError(f"dataset: expected a dataset name or an ImageFolder path, got {dataset!r}")
    return {"dataset": dataset, "resolution": resolution, "epochs": epochs,
            "batch_size": batch_size, "lr": float(lr), "weight_decay": float(weight_decay),
            "momentum": float(momentum), "seed": int(seed), "train_subset": train_subset,
            "val_subset": val_subset, "threads_per_trial": threads_per_trial}


def _dataset(settings, split):
    key = (settings["dataset"], settings["resolution"], split)
    if key not in _DATASETS:
        from ..training import load_dataset

        _DATASETS[key] = load_dataset(settings["dataset"], resolution=settings["resolution"],
                                      split=split)
    return _DATASETS[key]


def _subset(dataset, size, seed):
    # The same images for every trial of a sweep: the subset depends on the sweep's seed only.
    if size is None or size >= len(dataset):
        return dataset
    import torch.utils.data

    order = np.random.default_rng(seed).permutation(len(dataset))[:size]
    return torch.utils.data.Subset(dataset, sorted(order.tolist()))


def train_trial(task):
    """Trains one sampled model with the sweep's settings; returns its result record.

    A module-level function of plain-data arguments, so every engine can pickle it."""
    import torch

    from ..models.anynet import AnyNet
    from ..training import fit, num_classes_of
    from ..training.loop import TrainingDiverged

    settings, trial = task["settings"], task["trial"]
    threads = torch.get_num_threads()
    torch.set_num_threads(settings["threads_per_trial"])  # same arithmetic whatever the engine
    try:
        full_train = _dataset(settings, "train")
        train = _subset(full_train, settings["train_subset"], settings["seed"])
        val = _subset(_dataset(settings, "val"), settings["val_subset"], settings["seed"] + 1)
        spec_fields = dict(task["sample"]["spec"], num_classes=num_classes_of(full_train))
        seed = settings["seed"] + trial
        torch.manual_seed(seed)
        model = AnyNet(spec_from_dict(spec_fields))
        start, diverged = time.perf_counter(), False
        try:
            result = fit(model, train, val, epochs=settings["epochs"],
                         batch_size=settings["batch_size"], lr=settings["lr"],
                         weight_decay=settings["weight_decay"], momentum=settings["momentum"],
                         seed=seed, device="cpu", progress=False)
        except TrainingDiverged:
            diverged = True
            # A diverged model is a result, not a failure: the paper counts it as maximal error.
            result = {"top1_error": DIVERGED_ERROR, "train_time_s": time.perf_counter() - start,
                      "num_params": sum(p.numel() for p in model.parameters())}
    finally:
        torch.set_num_threads(threads)
    record = dict(task["sample"], trial=trial, settings=settings,
                  top1_error=float(result["top1_error"]),
                  train_time_s=float(result["train_time_s"]))
    if diverged:
        record["diverged"] = True
    if "trials" in task:
        record["sweep_trials"] = task["trials"]  # lets analyze notice a sweep's missing trials
    # Only what the seed decides: timings other than train_time_s would make resumed and
    # uninterrupted sweeps differ for no reason.
    record["train"] = {k: result[k] for k in TRAIN_FIELDS if k in result}
    return record


def settings_diff(a, b):
    """{setting: (value in a, value in b)} for the training settings where records' ``settings``
    a and b differ (None stands for a missing setting, or for records without settings)."""
    a, b = a or {}, b or {}
    return {k: (a.get(k), b.get(k)) for k in {**a, **b} if a.get(k) != b.get(k)}


def _check_resumable(records, tasks, path):
    by_trial = {}
    for r in records:
        trial = r.get("trial")
        if not (isinstance(trial, int) and 0 <= trial < len(tasks)):
            raise ValueError(f"out: {path} has a record for trial {trial!r}, but this sweep has "
                             f"{len(tasks)} trials; use a new file for a different sweep")
        task = tasks[trial]
        if r.get("spec") != task["sample"]["spec"]:
            raise ValueError(f"out: {path} trial {trial} is another architecture than this "
                             f"sweep's; use a new file for a different sweep")
        diff = settings_diff(r.get("settings"), task["settings"])
        if diff:
            raise ValueError(f"out: {path} was written with other settings (file vs now: {diff}); "
                             f"use a new file or the same settings")
        if trial in by_trial:
            raise ValueError(f"out: {path} holds trial {trial} twice")
        by_trial[trial] = r
    return by_trial


class _Progress:
    """tqdm when installed, else one line per finished trial on stderr."""

    def __init__(self, total, done, enabled):
        self.bar = None
        self.total, self.count, self.enabled = total, done, enabled
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, initial=done, desc="sweep", unit="model")
            except ImportError:
                pass

    def update(self, record):
        self.count += 1
        if self.bar is not None:
            self.bar.set_postfix(err=f"{record['top1_error']:.2f}")
            self.bar.update(1)
        elif self.enabled:
            print(f"sweep: {self.count}/{self.total} trial {record['trial']} "
                  f"top1_error={record['top1_error']:.2f}", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def run_sweep(samples, out, *, engine="local", workers=None, engine_options=None,
              progress=True, **settings):
    """Trains every sample (a list of Sample) and writes one record per trial to ``out`` (JSONL).

    settings: see ``sweep_settings`` (dataset="digits" or an ImageFolder path, resolution=16,
    epochs=5, batch_size=32, lr=0.025, weight_decay, momentum, seed, train_subset/val_subset to
    train on a fixed random subset, threads_per_trial=1).

    engine: "local" (``workers`` processes, default one per CPU; a script must then call
    run_sweep under ``if __name__ == "__main__":``), "inline" (this process) or "submitit"
    (``engine_options``: folder, cluster, timeout_min, slurm_partition, ...).

    Resumes from ``out`` if it holds part of this same sweep (same samples and settings, else
    ValueError). Returns the records in trial order; raises RuntimeError after the run if some
    trials failed (the finished ones are kept on disk; running again retries the others).
    """
    samples = [s if isinstance(s, Sample) else Sample.from_dict(s) for s in samples]
    if not samples:
        raise ValueError("samples: expected at least one sample")
    if os.path.isdir(out):
        raise ValueError(f"out: {out} is a directory; expected a JSONL file path")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):  # found now, not after a trial
        raise ValueError(f"out: the folder of {out} does not exist")
    settings = sweep_settings(**settings)
    tasks = [{"trial": i, "sample": s.to_dict(), "settings": settings, "trials": len(samples)}
             for i, s in enumerate(samples)]
    done = _check_resumable(read_records(out, repair=True), tasks, out)
    pending = [t for t in tasks if t["trial"] not in done]
    options = dict(engine_options or {})
    folder = options.pop("folder", None) or f"{os.path.splitext(out)[0]}.submitit"
    runner = make_engine(engine, workers=workers, folder=folder, options=options)
    bar = _Progress(len(tasks), len(done), progress)
    failures, start = [], time.time()
    results = runner.run(train_trial, pending)
    try:
        for task, result in results:
            if isinstance(result, BaseException):
                failures.append((task["trial"], f"{type(result).__name__}: {result}"))
                continue
            append_record(out, result)
            done[task["trial"]] = result
            bar.update(result)
    finally:
        # Stop the engine now (pool shut down, jobs cancelled) when interrupted, not whenever
        # the traceback that holds this frame is freed.
        results.close()
        bar.close()
    if failures:
        listed = "; ".join(f"trial {t}: {msg}" for t, msg in failures[:5])
        raise RuntimeError(f"sweep: {len(failures)} of {len(pending)} trials failed ({listed}); "
                           f"the {len(done)} finished ones are in {out}: run again to retry")
    records = [done[i] for i in range(len(tasks))]
    write_records(out, records)  # canonical trial order, whatever order trials finished in
    if progress:
        print(f"sweep: {len(tasks)} trials in {out} ({len(pending)} trained now, "
              f"{time.time() - start:.1f} s)", file=sys.stderr)
    return records
