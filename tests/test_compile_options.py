"""Compile options: the one-off programs (measurements) and the options per backend."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from toy_lm.compile_options import (
    CPU_COMPILER_OPTIONS,
    NO_LIBRARY_FUSIONS,
    ONE_OFF_CPU_COMPILER_OPTIONS,
    compiler_options,
    one_off_jit,
    supported_options,
)


def _softmax_sum(x, y):
    return jnp.sum(jax.nn.softmax(x, axis=-1) * y, axis=-1)


def test_options_per_backend():
    extra = supported_options(NO_LIBRARY_FUSIONS)
    assert compiler_options("cpu") == {**CPU_COMPILER_OPTIONS, **extra}
    assert compiler_options("cpu", one_off=True) == {**ONE_OFF_CPU_COMPILER_OPTIONS, **extra}
    assert ONE_OFF_CPU_COMPILER_OPTIONS["xla_backend_optimization_level"] == 0
    assert compiler_options("gpu") is None and compiler_options("gpu", one_off=True) is None


def test_one_off_jit_equals_jit_alone_and_inside_other_programs():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    fast = one_off_jit(_softmax_sum)
    want = np.asarray(jax.jit(_softmax_sum)(x, y))
    # the other optimization level may round differently (a few ulps: measured 1-2 on these
    # 5-term sums of O(1) terms); 16 eps bounds two summation orders of 5 terms of size <= 3
    tol = 16 * np.finfo(np.float64).eps
    # alone: compiled with the one-off options
    np.testing.assert_allclose(np.asarray(fast(x, y)), want, rtol=0, atol=tol)
    # inside jit, vmap and grad: a nested plain jit (JAX refuses compiler options there)
    np.testing.assert_allclose(np.asarray(jax.jit(fast)(x, y)), want, rtol=0, atol=tol)
    np.testing.assert_allclose(np.asarray(jax.vmap(fast)(x, y)), want, rtol=0, atol=tol)
    grad = jax.grad(lambda a: jnp.sum(fast(a, y)))(x)
    want_grad = jax.grad(lambda a: jnp.sum(_softmax_sum(a, y)))(x)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(want_grad), rtol=0, atol=tol)
    assert fast.__name__ == "_softmax_sum"


def test_one_off_compiles_adds_the_flags_keeps_the_users_and_restores(monkeypatch):
    from toy_lm.compile_options import ONE_OFF_XLA_FLAGS, one_off_compiles

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    with one_off_compiles():
        assert os.environ["XLA_FLAGS"].split() == list(ONE_OFF_XLA_FLAGS)
    assert "XLA_FLAGS" not in os.environ
    mine = "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=2"
    monkeypatch.setenv("XLA_FLAGS", mine)
    with one_off_compiles():
        flags = os.environ["XLA_FLAGS"].split()
        assert flags == [*mine.split(), "--xla_cpu_use_fusion_emitters=false"]
    assert os.environ["XLA_FLAGS"] == mine


def test_the_check_command_runs_with_the_flags_and_leaves_none_behind(monkeypatch):
    from experiments.cli import check
    from experiments.cli.main import main
    from toy_lm.compile_options import ONE_OFF_XLA_FLAGS

    seen = []

    def fake_run(args):
        seen.append(os.environ.get("XLA_FLAGS"))
        return 0

    monkeypatch.setattr(check, "_run", fake_run)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert main(["check", "--theorem", "T1"]) == 0
    assert seen == [" ".join(ONE_OFF_XLA_FLAGS)]
    assert "XLA_FLAGS" not in os.environ


def test_supported_options_drops_what_xla_does_not_know():
    known = {"xla_backend_optimization_level": 1}
    assert supported_options({**known, "xla_cpu_no_such_option_here": True}) == known
    # every option compiler_options returns compiles a program
    x = jnp.arange(3.0)
    for one_off in (False, True):
        options = compiler_options("cpu", one_off=one_off)
        compiled = jax.jit(jnp.sum).lower(x).compile(options)
        assert float(compiled(x)) == 3.0


def test_compiling_in_turn_makes_processes_take_turns(tmp_path):
    """Two holders of one key never overlap (the second enters after the first leaves); other
    keys, or no cache folder, do not wait."""
    import threading
    import time

    from toy_lm.compile_options import compiling_in_turn

    previous = getattr(jax.config, "jax_compilation_cache_dir", None)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path))
    try:
        spans = {}

        def hold(name, key, seconds):
            with compiling_in_turn(key):
                entered = time.monotonic()
                time.sleep(seconds)
                spans[name] = (entered, time.monotonic())

        first = threading.Thread(target=hold, args=("first", "program A", 0.5))
        first.start()
        time.sleep(0.1)  # the first holds the lock now
        second = threading.Thread(target=hold, args=("second", "program A", 0.0))
        other = threading.Thread(target=hold, args=("other", "program B", 0.0))
        second.start()
        other.start()
        for thread in (first, second, other):
            thread.join(timeout=30)
        assert spans["second"][0] >= spans["first"][1]  # waited for the first
        assert spans["other"][0] < spans["first"][1]  # another program: no wait
        names = sorted(p.name for p in tmp_path.iterdir())
        assert [n.split("-")[0] for n in names] == [".compiled"] * 2 + [".compiling"] * 2
        # compiled once: later holders of the key do not wait, even while another holds it
        entered = threading.Event()
        with compiling_in_turn("program A"):
            late = threading.Thread(target=lambda: hold("late", "program A", 0.0) or entered.set())
            late.start()
            assert entered.wait(timeout=10)
        late.join(timeout=10)
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)
    # without a cache folder nothing is locked
    jax.config.update("jax_compilation_cache_dir", None)
    try:
        with compiling_in_turn("program A"), compiling_in_turn("program A"):
            pass  # the same key twice in one thread: would deadlock if it locked
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)


def test_compiling_in_turn_without_waiting_says_whose_turn_it_is(tmp_path):
    """``wait=False``: a key held elsewhere gives ``False`` at once (no wait, no marker); a free
    key, a compiled one, or no cache folder gives ``True``."""
    import threading

    from toy_lm.compile_options import compiling_in_turn

    previous = getattr(jax.config, "jax_compilation_cache_dir", None)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path))
    try:
        held, release, seen = threading.Event(), threading.Event(), {}

        def hold():
            with compiling_in_turn("program A"):
                held.set()
                release.wait(timeout=30)

        holder = threading.Thread(target=hold)
        holder.start()
        assert held.wait(timeout=10)
        markers = lambda: sorted(
            p.name for p in tmp_path.iterdir() if p.name.startswith(".compiled")
        )  # noqa: E731
        with compiling_in_turn("program A", wait=False) as mine:
            seen["held"] = mine
        assert markers() == []  # a skipped turn marks nothing compiled
        with compiling_in_turn("program B", wait=False) as mine:
            seen["free"] = mine
        assert len(markers()) == 1  # program B's turn, taken and finished
        release.set()
        holder.join(timeout=10)
        assert len(markers()) == 2
        with compiling_in_turn("program A", wait=False) as mine:
            seen["compiled"] = mine
        assert seen == {"held": False, "free": True, "compiled": True}
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)
    jax.config.update("jax_compilation_cache_dir", None)
    try:
        with compiling_in_turn("program A", wait=False) as mine:
            assert mine is True
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)
