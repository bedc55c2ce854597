"""Tests of proofs_check.runner: planning, crash handling, summaries."""

from proofs_check import instances, registry, runner
from proofs_check.registry import Check


def test_plan_and_summaries_and_crash_becomes_a_failed_result():
    inst = instances.make_instance("tabular", 2, 2, seed=0, tau=1)
    good = registry.select(["T1-sum"])[0]

    def crash(instance, plant):
        raise RuntimeError("boom")

    bad = Check("TX", "a check that crashes", crash, ("shifted-H",))
    tasks = runner.plan([good, bad], [inst])
    assert [t.check.id for t in tasks] == ["T1-sum", "TX"]
    results = runner.run_tasks(tasks)
    assert results[0].passed and not results[1].passed
    assert "RuntimeError: boom" in results[1].parts[0].lhs
    rows = {s.check: s for s in runner.summarize(results)}
    assert rows["T1-sum"].ok and not rows["TX"].ok
    planted = runner.plan([good], [inst], negative_controls=True)
    assert [t.plant for t in planted] == ["shifted-H"]
    rows = runner.summarize(runner.run_tasks(planted))
    assert rows[0].ok and rows[0].failed == rows[0].instances == 1
