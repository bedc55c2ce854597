"""``analyze --distributed``: 2 local processes (jax.distributed, gloo) run a tree that one process
refuses under ``HARM_HORIZON_MEMORY_LIMIT``, bitwise equal to the one-process sharded engine; a
failing process ends the run with one line, never a hang.

The processes are real (``harm-horizon analyze --distributed --local-processes 2``, and
``--coordinator/--num-processes/--process-id`` by hand); the one-process reference runs here,
without the limit.
"""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from test_sharded import tolerance

from experiments.cli.main import main
from toy_lm.engines.analysis import analyze_tree
from toy_lm.engines.distributed import free_port
from toy_lm.engines.sharded import (
    analyze_sharded,
    local_gather,
    make_mesh,
    plan,
    share_bytes,
    summarize_share,
)
from toy_lm.models.harms import random_decided_harm
from toy_lm.tables import MEMORY_LIMIT_ENV

V, T, SPLIT, LAM = 2, 13, 1, 0.5
#: Seconds any one launch may take before the test calls it a hang.
HANG_S = 120


def instance(tmp_path, *, nan_in_last_row=False):
    rng = np.random.default_rng(17)
    logits = [rng.normal(size=(V**l, V)) for l in range(T)]
    ref = [rng.normal(size=(V**l, V)) for l in range(T)]
    harm = np.asarray(random_decided_harm(jax.random.key(17), V, T, 7, binary=False))
    if nan_in_last_row:  # in process 1's share only (the last subtree)
        logits[-1][-1, 0] = np.nan
    path = tmp_path / "tables.npz"
    np.savez(
        path,
        harm=harm,
        **{f"logits_{l}": z for l, z in enumerate(logits)},
        **{f"ref_logits_{l}": z for l, z in enumerate(ref)},
    )
    return str(path), logits, ref, harm


def start_analyze(args, cwd, limit=None, **env_vars) -> subprocess.Popen:
    """``harm-horizon analyze ARGS`` in a child process on the CPU (pipes for its output), with
    ``env_vars`` and the memory limit ``limit`` (or none) in its environment."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", **env_vars)
    env.pop(MEMORY_LIMIT_ENV, None)
    if limit is not None:
        env[MEMORY_LIMIT_ENV] = str(limit)
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.cli.main", "analyze", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def cli(args, cwd, limit=None):
    start = time.monotonic()
    proc = start_analyze(args, cwd, limit)
    try:
        out, err = proc.communicate(timeout=HANG_S)
    except subprocess.TimeoutExpired:  # a hang fails the test and leaves no process behind
        proc.kill()
        proc.communicate()
        raise
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done, time.monotonic() - start


def one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_two_processes_run_a_tree_one_process_refuses(tmp_path):
    path, logits, ref, harm = instance(tmp_path)
    one, two = (share_bytes(V, T, SPLIT, n, ref=True) for n in (1, 2))
    limit = two  # a share fits when its estimate is at most the limit
    assert limit < one

    # One process alone refuses the tree (the sharded engine's estimate; the host-chunked
    # engine of plain `analyze` has a smaller one of its own and is not part of this run).
    alone, _ = cli(
        [path, "--distributed", "--local-processes", "1", "--split", str(SPLIT)], tmp_path, limit
    )
    assert "per process" in one_error_line(alone) and MEMORY_LIMIT_ENV in alone.stderr

    # Two processes under the same per-process limit run it.
    proc, _ = cli(
        [
            path,
            "--distributed",
            "--local-processes",
            "2",
            "--split",
            str(SPLIT),
            "--lam",
            str(LAM),
            "--json",
            "--out",
            "two.npz",
        ],
        tmp_path,
        limit,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout)  # stdout is the JSON alone (no gloo chatter)
    assert "sharded over 2 process(es)" in proc.stderr
    two_out = np.load(tmp_path / "two.npz")

    # The one-process sharded engine without the limit, at the same split level: bitwise.
    sharded = analyze_sharded(
        logits, harm, lam=LAM, ref_logits=ref, split=SPLIT, mesh=make_mesh(jax.devices()[:1])
    )
    summary = summarize_share(
        logits,
        harm,
        plan(V, T, split=SPLIT),
        lam=LAM,
        ref_logits=ref,
        mesh=make_mesh(jax.devices()[:1]),
        gather=local_gather,
    )
    assert two_out["harm_information"].dtype == np.float64
    assert float(two_out["expected_harm"]) == sharded.expected_harm == printed["expected_harm"]
    assert int(two_out["horizon"]) == sharded.horizon == printed["horizon"]
    for key in ("harm_information", "equilibrium_kl", "per_position_kl"):
        np.testing.assert_array_equal(two_out[key], getattr(sharded, key), err_msg=key)
    np.testing.assert_array_equal(two_out["grad_abs_sum"], summary.grad_abs_sums)
    np.testing.assert_array_equal(two_out["determined_fraction"], summary.determined_fractions)
    assert [row["harm_information"] for row in printed["positions"]] == list(
        two_out["harm_information"]
    )

    # ... and the host-chunked engine to rounding (eps x 16 (T+1) V², test_sharded.tolerance).
    exact = analyze_tree(logits, harm, lam=LAM, ref_logits=ref)
    assert int(two_out["horizon"]) == exact.horizon
    np.testing.assert_array_equal(two_out["determined_fraction"], exact.determined_fraction())
    for key, want in (
        ("harm_information", exact.harm_information),
        ("equilibrium_kl", exact.equilibrium_kl),
        ("per_position_kl", exact.per_position_kl),
        ("grad_abs_sum", exact.grad_abs_sum()),
        ("expected_harm", exact.expected_harm),
    ):
        np.testing.assert_allclose(two_out[key], want, rtol=0, atol=tolerance(V, T), err_msg=key)
    assert np.max(exact.harm_information) > 1e-3  # the comparison is not over zeros


def test_a_failing_process_stops_the_run_with_one_line(tmp_path):
    path, *_ = instance(tmp_path, nan_in_last_row=True)
    # The launcher: process 1 refuses its rows after joining; process 0 is stopped.
    proc, seconds = cli(
        [path, "--distributed", "--local-processes", "2", "--split", str(SPLIT)], tmp_path
    )
    line = one_error_line(proc)
    assert "process 1 of 2 failed" in line and "non-finite" in line, line
    assert seconds < HANG_S

    # By hand: process 1 never joins (a missing file); process 0 gives up after --timeout.
    port = str(free_port())
    common = [
        "--distributed",
        "--coordinator",
        f"127.0.0.1:{port}",
        "--num-processes",
        "2",
        "--timeout",
        "5",
    ]
    first = start_analyze([path, *common, "--process-id", "0"], tmp_path)
    other, _ = cli(["missing.npz", *common, "--process-id", "1"], tmp_path)
    assert "no such file" in one_error_line(other)
    _, err = first.communicate(timeout=HANG_S)
    assert first.returncode == 2, err[-2000:]
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "process 0 of 2: no result after 5 s" in lines[0], err
    assert "Traceback" not in err and "Check failure" not in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--split", "1"], "--split needs --distributed"),
        (["--distributed", "--local-processes", "0"], "need at least 1"),
        (["--distributed", "--local-processes", "2", "--process-id", "0"], "starts the processes"),
        (["--distributed", "--num-processes", "2", "--process-id", "2"], "--process-id 2"),
        (["--distributed", "--coordinator", "host"], "HOST:PORT"),
        (["--distributed", "--timeout", "0"], "positive number"),
        (["--distributed", "--mi"], "--mi is not available"),
    ],
)
def test_bad_distributed_options_are_one_line(tmp_path, capsys, args, message):
    path, *_ = instance(tmp_path)
    assert main(["analyze", path, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_random_and_compressed_tables_are_refused(tmp_path, capsys):
    assert main(["analyze", "--random", "2", "3", "1", "--distributed"]) == 2
    assert "--save-tables" in capsys.readouterr().err
    path, logits, _, harm = instance(tmp_path)
    packed = tmp_path / "packed.npz"
    np.savez_compressed(packed, harm=harm, **{f"logits_{l}": z for l, z in enumerate(logits)})
    assert main(["analyze", str(packed), "--distributed", "--num-processes", "1"]) == 2
    assert "np.savez (uncompressed)" in capsys.readouterr().err


def _slurm_port() -> int:
    """A free port among those JAX's SLURM detection derives from a job id (61440 + id % 4096)."""
    import random
    import socket

    for port in random.Random(os.getpid()).sample(range(61440, 65536), 64):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free port in 61440 ... 65535")


def test_a_slurm_environment_is_detected_without_coordinator_arguments(tmp_path):
    """Two tasks of a (simulated) SLURM job step on this host: jax.distributed.initialize() finds
    the coordinator, the process count and the ranks in SLURM's variables."""
    path, logits, ref, harm = instance(tmp_path)
    job = _slurm_port() - 61440
    procs = []
    for rank in range(2):
        procs.append(
            start_analyze(
                [path, "--distributed", "--lam", str(LAM), "--json", "--timeout", "60"],
                tmp_path,
                SLURM_JOB_ID=str(job),
                SLURM_NTASKS="2",
                SLURM_PROCID=str(rank),
                SLURM_LOCALID=str(rank),
                SLURM_STEP_NODELIST="localhost",
                SLURM_NODELIST="localhost",
            )
        )
    outs = [p.communicate(timeout=HANG_S) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert outs[1][0] == ""  # only process 0 prints
    assert "sharded over 2 process(es)" in outs[0][1] and "split level m=1" in outs[0][1]
    printed = json.loads(outs[0][0])
    summary = summarize_share(
        logits,
        harm,
        plan(V, T, split=SPLIT),
        lam=LAM,
        ref_logits=ref,
        mesh=make_mesh(jax.devices()[:1]),
        gather=local_gather,
    )
    assert printed["expected_harm"] == summary.expected_harm
    assert [row["harm_information"] for row in printed["positions"]] == list(
        summary.harm_information
    )
    assert [row["per_position_kl"] for row in printed["positions"]] == list(summary.per_position_kl)
