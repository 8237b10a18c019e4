"""benchmarks/common.py's CompetingLoad: the CPU time other processes (and steal) take while
candidates are timed, from /proc/stat less this process's own time; a warning above a share."""
import subprocess
import sys
import time

import pytest

import benchmark_scripts

common = benchmark_scripts.load("common")


def _synthetic(monkeypatch, samples, cpus=2):
    """CompetingLoad whose counters read `samples` (wall, busy, steal, own) in turn."""
    feed = iter(samples)
    monkeypatch.setattr(common.CompetingLoad, "_counters", staticmethod(lambda: next(feed)))
    monkeypatch.setattr(common.os, "cpu_count", lambda: cpus)
    return common.CompetingLoad()


def test_others_time_is_the_machines_busy_time_less_our_own(monkeypatch):
    # 2 s on 2 CPUs: the machine was busy 4 CPU-seconds, 2 of them ours; steal 0.5.
    load = _synthetic(monkeypatch, [(10.0, 100.0, 5.0, 7.0), (12.0, 104.0, 5.5, 9.0)])
    with load.counting():
        pass
    record = load.record()
    assert record["timed_s"] == 2.0 and record["other_processes_cpu_s"] == 2.0 and record["steal_cpu_s"] == 0.5
    assert record["other_processes_share"] == pytest.approx(0.5) and record["steal_share"] == pytest.approx(0.125)
    assert "other processes took 50% of the CPU time and the hypervisor 12% (steal)" in load.warning()


def test_no_warning_when_the_machine_was_ours(monkeypatch):
    load = _synthetic(monkeypatch, [(0.0, 50.0, 1.0, 3.0), (1.0, 51.9, 1.0, 4.9)])
    with load.counting():
        pass
    assert load.record()["other_processes_cpu_s"] == pytest.approx(0.0) and load.warning() is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat")
def test_a_busy_process_beside_the_timing_is_counted():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # started and spinning
        load = common.CompetingLoad()
        with load.counting():
            time.sleep(1.0)  # ours: idle
        assert load.record()["other_processes_cpu_s"] >= 0.5
    finally:
        busy.kill()
        busy.wait()
