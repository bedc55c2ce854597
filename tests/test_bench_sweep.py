"""Tests of experiments.bench.sweep's cost model: the operation counts behind its two floors.
(Speed targets live in the benchmark itself, never in timed unit tests.)"""

import math

from experiments.bench.sweep import costs_per_run, exp_seconds
from experiments.config import with_overrides
from experiments.presets import preset
from toy_lm.compile_options import compiler_options


def test_a_run_costs_grow_linearly_with_its_alignment_steps():
    """The counts add the alignment step once per step: one more step adds the same amount
    each time, and every step evaluates at least one ``exp`` per logit (the softmax of every
    level table of both prompts)."""
    cfg = preset("tiny")
    steps = cfg.align.steps
    costs = [
        costs_per_run(with_overrides(cfg, {"align.steps": steps + extra}), 1.0)
        for extra in (0, 1, 2)
    ]
    vocab = len(cfg.world.vocab)
    logits = 2 * sum(vocab**level * vocab for level in range(cfg.world.length))  # 2 prompts
    for key in ("flops", "transcendentals"):
        first, second = costs[1][key] - costs[0][key], costs[2][key] - costs[1][key]
        assert first == second > 0, key
    assert costs[1]["transcendentals"] - costs[0]["transcendentals"] >= logits
    assert costs[0]["transcendentals"] >= steps * logits


def test_exp_seconds_is_a_rate_per_element():
    """A measured time per float64 ``exp``: positive, finite, and well under a microsecond
    (a libm call takes nanoseconds; this guards the division by the element count)."""
    for options in (compiler_options("cpu"), None):
        seconds = exp_seconds(options, size=2**12, repeats=2)
        assert math.isfinite(seconds) and 0 < seconds < 1e-6
