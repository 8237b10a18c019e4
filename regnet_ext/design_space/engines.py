"""Where sweep trials run: in this process, in local worker processes, or through submitit.

Every engine has ``run(fn, tasks)``, an iterator of ``(task, result_or_exception)`` pairs in
completion order; the sweep writes each result to disk as soon as it arrives.

submitit (optional dependency, ``pip install submitit``) was chosen over Ray: it is a small
pure-Python package that submits plain functions as SLURM jobs (the clusters design-space sweeps
usually run on), keeps each job's pickled result and logs in a folder, needs no long-lived cluster
service, and its ``cluster="local"`` mode runs the very same jobs as local subprocesses.
"""
import concurrent.futures
import concurrent.futures.process
import multiprocessing
import os
import signal
import threading

ENGINES = ("local", "inline", "submitit")


class InlineEngine:
    """Runs trials one after another in this process (debugging, or when processes are costly)."""

    def run(self, fn, tasks):
        for task in tasks:
            try:
                yield task, fn(task)
            except Exception as e:  # a failed trial must not end the sweep
                yield task, e


class LocalEngine:
    """Runs trials in parallel in ``workers`` local processes (spawned: each gets a clean torch)."""

    def __init__(self, workers=None):
        if workers is None:
            workers = max(1, os.cpu_count() or 1)
        if not (isinstance(workers, int) and workers >= 1):
            raise ValueError(f"workers: expected an integer >= 1, got {workers!r}")
        self.workers = workers

    def run(self, fn, tasks):
        tasks = list(tasks)
        if not tasks:
            return
        context = multiprocessing.get_context("spawn")
        pool = concurrent.futures.ProcessPoolExecutor(min(self.workers, len(tasks)),
                                                      mp_context=context)
        finished = False
        try:
            futures = {pool.submit(fn, task): task for task in tasks}
            for future in concurrent.futures.as_completed(futures):
                error = future.exception()
                if isinstance(error, concurrent.futures.process.BrokenProcessPool):
                    error = RuntimeError(
                        "a worker process died. Scripts that use engine='local' must run the "
                        "sweep under `if __name__ == '__main__':` (spawned workers import the "
                        "main module again); otherwise the trial may have run out of memory")
                yield futures[future], error if error is not None else future.result()
            finished = True
        finally:
            if finished:
                pool.shutdown(wait=True)
            else:
                _stop_now(pool)


def _stop_now(pool):
    """Shuts a pool down without waiting for its running trials (interrupted sweep: they are
    redone on resume). Ctrl-C and SIGTERM are ignored for these few seconds: a second Ctrl-C
    that interrupted a pool's shutdown has been seen to leave the sweep hung for good."""
    main = threading.current_thread() is threading.main_thread()
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)} \
        if main else {}
    try:
        workers = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)  # queued trials: no worker picks one up
        for process in workers:
            process.terminate()
        for process in workers:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
        pool.shutdown(wait=True)
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


class SubmititEngine:
    """Submits each trial as a submitit job: to SLURM when it is available (``cluster=None`` lets
    submitit decide), or as local subprocesses with ``cluster="local"``. ``folder`` keeps the
    jobs' logs and pickles; ``options`` go to ``executor.update_parameters`` (e.g. timeout_min,
    slurm_partition, gpus_per_node, slurm_array_parallelism)."""

    def __init__(self, folder, *, cluster=None, poll_s=1.0, **options):
        try:
            import submitit
        except ImportError:
            raise RuntimeError("engine='submitit' needs the submitit package: "
                               "pip install submitit") from None
        self._submitit = submitit
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        options.setdefault("timeout_min", 60)
        self.executor.update_parameters(**options)
        self.poll_s = poll_s

    def run(self, fn, tasks):
        tasks = list(tasks)
        if not tasks:
            return
        with self.executor.batch():  # one job array on SLURM rather than len(tasks) submissions
            jobs = [self.executor.submit(fn, task) for task in tasks]
        by_id = {id(job): task for job, task in zip(jobs, tasks)}
        try:
            for job in self._submitit.helpers.as_completed(jobs, poll_frequency=self.poll_s):
                try:
                    yield by_id[id(job)], job.result()
                except Exception as e:
                    yield by_id[id(job)], e
        finally:
            for job in jobs:
                if not job.done():
                    job.cancel(check=False)


def make_engine(engine="local", *, workers=None, folder=None, options=None):
    """An engine by name: "local" (process pool), "inline" or "submitit"."""
    options = dict(options or {})
    if engine == "local":
        return LocalEngine(workers)
    if engine == "inline":
        return InlineEngine()
    if engine == "submitit":
        if folder is None:
            raise ValueError("folder: engine='submitit' needs a folder for its jobs' files")
        return SubmititEngine(folder, **options)
    raise ValueError(f"engine: expected one of {ENGINES}, got {engine!r}")
