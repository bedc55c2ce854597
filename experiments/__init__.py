"""experiments: the toy counterpart of Qi et al. 2025 in a configurable refusal world.

Train base models by SFT, align them with the standard objectives and the fixes (optax), measure
them exactly, sweep (whole grids as vmapped programs per group: :func:`run_stages`),
tabulate and plot. Entry points: :func:`train_and_evaluate` (one run), :func:`run_sweep`,
:func:`make_figures`, :func:`run_headline` (``shallow-vs-deep``), :func:`run_dynamics`
(``optimum-vs-dynamics``), and the
``harm-horizon train | sweep | figures | experiment`` commands.
"""

from toy_lm.lazy import lazy_exports

#: What the package re-exports, by the module that defines it (imported on first use).
_EXPORTS = {
    "experiments.attack": ("fine_tuning_attack", "fine_tuning_attacks"),
    "experiments.base_model": ("policy_from_config", "train_base"),
    "experiments.presets": ("PRESETS", "load_config"),
    "experiments.config": (
        "AlignConfig",
        "AttackConfig",
        "BaseConfig",
        "MeasureConfig",
        "PolicyConfig",
        "RunConfig",
        "WorldConfig",
        "config_hash",
        "with_overrides",
    ),
    "experiments.explorer": ("write_explorer",),
    "experiments.figures": ("make_figures",),
    "experiments.batch_sweep": ("plan_batches",),
    "experiments.dynamics": ("run_dynamics",),
    "experiments.headline": ("run_headline",),
    "experiments.measure": ("base_measurements", "model_measurements"),
    "experiments.notebooks": ("write_notebooks",),
    "experiments.objectives": (
        "constrained_loss",
        "dpo_loss_blocks",
        "qi_betas",
        "reinforce_surrogate",
        "sampled_dpo_loss",
        "supervised_loss",
    ),
    "experiments.recipes": ("make_objective",),
    "experiments.results": ("load_results", "write_tables"),
    "experiments.sweep": ("load_sweep", "run_sweep"),
    "experiments.train": ("train_and_evaluate",),
    "experiments.vectorized": ("base_program", "group_key", "run_stages"),
    "experiments.world": ("RefusalWorld", "make_world"),
}

__getattr__, __dir__, __all__ = lazy_exports(globals(), _EXPORTS)
