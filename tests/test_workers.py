"""The sweep's worker processes (:mod:`experiments.workers`): pinned to disjoint cores, deaf to
the Ctrl-C that their sweep handles."""

import glob
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from experiments.workers import worker_cores, worker_pool


def test_worker_cores_are_disjoint_and_cover_the_cores():
    for cores in ([0, 1], [3, 5, 9], list(range(16))):
        for workers in range(2, len(cores) + 1):
            sets = [worker_cores(i, workers, cores) for i in range(workers)]
            assert all(sets), (cores, workers)
            assert sum(len(s) for s in sets) == len(cores)
            assert set().union(*sets) == set(cores)
    assert worker_cores(0, 1, [0, 1]) is None  # one worker keeps every core
    assert worker_cores(0, 3, [0, 1]) is None  # more workers than cores: not pinned


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs two cores and sched_setaffinity",
)
def test_pool_workers_are_pinned_to_disjoint_cores():
    before = set(multiprocessing.active_children())
    pool = worker_pool(2)
    try:
        pool.map(abs, range(4))  # the pool is up
        workers = [p for p in multiprocessing.active_children() if p not in before]
        assert len(workers) == 2
        cores = set(os.sched_getaffinity(0))
        deadline = time.time() + 120  # a worker pins itself before it imports JAX
        while time.time() < deadline:
            sets = [os.sched_getaffinity(p.pid) for p in workers]
            if all(s != cores for s in sets):
                break
            time.sleep(0.05)
        assert sets[0] and sets[1] and not sets[0] & sets[1], sets
        assert sets[0] | sets[1] == cores
    finally:
        pool.terminate()
        pool.join()


def test_ctrl_c_on_a_vectorized_sweep_is_one_line_from_the_sweep_alone(tmp_path, compile_cache):
    """A terminal's Ctrl-C reaches the whole process group: the sweep prints its one line and
    exits 130; its workers ignore the signal (one used to print the start of a traceback)."""
    spec = tmp_path / "grid.toml"
    lams = [0.1 * (i + 1) for i in range(12)]
    spec.write_text(
        'preset = "tiny"\n[world]\nlength = 2\nnum_harmful = 1\n[base]\nsteps = 30\n'
        "[align]\nsteps = 6\n[attack]\nsteps = 2\n"
        f'[sweep]\ngrid = {{ "align.lam" = {lams}, "seed" = [0] }}\n'
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "experiments.cli.main", "sweep", str(spec), "--out", str(out)]
    proc = subprocess.Popen(
        [*cmd, "--jobs", "2", "--batch-size", "1"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 600
    while not glob.glob(str(out / "runs" / "*.json")) and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the sweep finished before the signal landed")
    assert proc.returncode == 130, stderr
    lines = [line for line in re.split(r"[\r\n]", stderr) if line.strip()]
    assert re.fullmatch(r"harm-horizon sweep: interrupted by SIGINT; .*", lines[-1]), stderr
    assert "Traceback" not in stderr and "SpawnPoolWorker" not in stderr, stderr
