"""experiments: the toy counterpart of Qi et al. 2025 in a configurable refusal world.

Train base models by SFT, align them with the standard objectives and the fixes (optax), measure
them exactly, sweep (whole grids as one vmapped program per group: :func:`run_program`),
tabulate and plot. Entry points: :func:`train_and_evaluate` (one run), :func:`run_sweep`,
:func:`make_figures`, :func:`run_headline` (``shallow-vs-deep``), :func:`run_dynamics`
(``optimum-vs-dynamics``), and the
``harm-horizon train | sweep | figures | experiment`` commands.
"""

from experiments.attack import fine_tuning_attack as fine_tuning_attack
from experiments.batch_sweep import plan_batches as plan_batches
from experiments.attack import fine_tuning_attacks as fine_tuning_attacks
from experiments.base_model import make_policy as make_policy
from experiments.base_model import train_base as train_base
from experiments.presets import PRESETS as PRESETS
from experiments.config import AlignConfig as AlignConfig
from experiments.config import AttackConfig as AttackConfig
from experiments.config import BaseConfig as BaseConfig
from experiments.config import MeasureConfig as MeasureConfig
from experiments.config import PolicyConfig as PolicyConfig
from experiments.config import RunConfig as RunConfig
from experiments.config import WorldConfig as WorldConfig
from experiments.config import config_hash as config_hash
from experiments.presets import load_config as load_config
from experiments.config import with_overrides as with_overrides
from experiments.dynamics import run_dynamics as run_dynamics
from experiments.figures import make_figures as make_figures
from experiments.headline import run_headline as run_headline
from experiments.measure import base_measurements as base_measurements
from experiments.measure import model_measurements as model_measurements
from experiments.objectives import constrained_loss as constrained_loss
from experiments.objectives import dpo_loss_blocks as dpo_loss_blocks
from experiments.objectives import qi_betas as qi_betas
from experiments.objectives import reinforce_surrogate as reinforce_surrogate
from experiments.objectives import sampled_dpo_loss as sampled_dpo_loss
from experiments.objectives import supervised_loss as supervised_loss
from experiments.recipes import make_objective as make_objective
from experiments.results import load_results as load_results
from experiments.results import write_tables as write_tables
from experiments.sweep import load_sweep as load_sweep
from experiments.sweep import run_sweep as run_sweep
from experiments.train import train_and_evaluate as train_and_evaluate
from experiments.vectorized import base_program as base_program
from experiments.vectorized import group_key as group_key
from experiments.vectorized import run_program as run_program
from experiments.world import RefusalWorld as RefusalWorld
from experiments.world import make_world as make_world

import types as _types

__all__ = [_name for _name, _value in dict(globals()).items()
           if not _name.startswith("_") and not isinstance(_value, _types.ModuleType)]
