"""The newest API the code uses from each dependency, exercised in seconds.

``.ci/run`` runs this file in a venv that holds exactly the version floors of pyproject.toml
(``.ci/floors.py`` turns every ``>=X`` into ``==X``), so a floor older than an API the code uses
fails CI; the full suite runs on the newest releases. Each test names the API and the floor that
brought it. Numba's compile of the full kernels (about a minute) is left to the full suite: here
the kernels' module is imported (its intrinsics and signatures are built at import).
"""

import jax
import numpy as np
import pytest

from toy_lm import TabularPolicy, TransformerPolicy, analyze_tree
from toy_lm.engines import tree
from toy_lm.models.harms import random_decided_harm


def _instance(vocab_size=2, length=3, seed=0):
    rng = np.random.default_rng(seed)
    logits = [rng.normal(size=(vocab_size**l, vocab_size)) for l in range(length)]
    harm = np.asarray(random_decided_harm(jax.random.key(seed), vocab_size, length, 2))
    return logits, harm


def test_flax_nnx_list_in_the_transformer():
    """``nnx.List`` (flax 0.12.0) holds the transformer's blocks; two layers use it."""
    policy = TransformerPolicy(vocab_size=2, length=2, num_layers=2)
    params = policy.init(jax.random.key(0))
    tables = policy.level_tables(params)
    assert [np.asarray(t).shape for t in tables] == [(1, 2), (2, 2)]


def test_jax_shard_map_in_the_sharded_engine():
    """``jax.shard_map`` (top level from jax 0.6.1; jax 0.7.1 is flax 0.12.0's own floor)."""
    from toy_lm.engines.sharded import analyze_sharded

    logits, harm = _instance()
    sharded, exact = analyze_sharded(logits, harm), analyze_tree(logits, harm, backend="xla")
    for a, b in zip(sharded.cond_harm, exact.cond_harm):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-12)


def test_optax_tree_norm():
    """``optax.tree.norm`` (optax 0.2.5), used for the per-position gradient norms in training."""
    import optax

    policy = TabularPolicy(vocab_size=2, length=2)
    grads = jax.grad(lambda p: tree.expected_harm(policy.level_tables(p), np.ones(4)))(
        policy.init(jax.random.key(0))
    )
    norm = float(optax.tree.norm(grads))
    assert np.isfinite(norm) and norm >= 0


def test_scipy_student_t_interval():
    from toy_lm.engines.montecarlo import t_interval

    est = t_interval(np.array([1.0, 2.0, 3.0]))
    assert est.mean == pytest.approx(2.0)


def test_numba_kernels_import():
    pytest.importorskip("numba")
    import toy_lm.engines.cpu_kernels  # noqa: F401


def test_experiments_extra_parquet_figure_markdown(tmp_path):
    """pyarrow (Parquet tables), matplotlib (figures) and markdown (report) at their floors."""
    pytest.importorskip("pyarrow")
    import matplotlib.pyplot as plt
    import pyarrow.parquet as pq

    from experiments.report import markdown_to_html
    from experiments.results import write_table

    write_table([{"run": "a", "kl": 0.5}, {"run": "b", "kl": 0.25}], str(tmp_path / "rows"))
    assert pq.read_table(tmp_path / "rows.parquet").num_rows == 2
    fig, ax = plt.subplots()
    ax.semilogy([1, 2, 3], [1e-3, 1e-2, 1e-1])
    fig.savefig(tmp_path / "f.svg")
    plt.close(fig)
    assert "<strong>x</strong>" in markdown_to_html("**x**")


def test_rich_tables_of_the_command_line(capsys):
    """rich (13.0) draws the command line's tables: ``harm-horizon check --list``."""
    from experiments.cli.main import main

    assert main(["check", "--list"]) == 0
    assert "T5" in capsys.readouterr().out
