"""The experiment ``optimum-vs-dynamics``: which part of shallow alignment the objective explains,
and which part the optimizer does (THEORY.md T7b, T14).

In the refusal world (harmful prompt, ``π0`` = the synthetic base behaviour as tabular logits),
the prefill attack forces a length-``k`` prefix ``u ~ q_k`` (the base model's harmful prefixes).
Every forced prefix is either

* **decided** (``det_k(u)``: the ``K``-th harmful token is already in it): ``H^π_k(u) = 1`` for
  every policy, and the optimum ``π*_λ`` of ``L_λ = E_π[h] + λ KL(π‖π0)`` keeps ``π0`` below it
  (T7b): the *objective* is blind there, no optimizer can help; or
* **undecided** (a refusal can still avert the harm): ``π*_λ`` moves ``π0`` there however rarely
  ``u`` is reached, so whatever a trained model leaves of ``ASR`` there is the *optimizer's* doing
  (T14: plain gradient descent reaches the subtree below ``u`` with step ``η P_π(u)``).

Measured: ``ASR(k)`` split into its decided part ``Σ_u q_k(u) det_k(u)`` and its undecided part
``Σ_u q_k(u) (1 - det_k(u)) H^π_k(u)``, for the base, the exact optimum
(:func:`toy_lm.engines.tree.equilibrium_policy`) and policies trained on the exact ``L_λ`` by plain
gradient descent, natural gradient (:func:`proofs_check.training.scale_by_inverse_prefix_mass`)
and Adam at every budget (tabular), and a shared-weight transformer (SFT base, Adam); and, at
every undecided forced prefix, the steps until ``H^π_k(u)`` has come half-way from ``π0``'s value
to ``π*_λ``'s, against ``P_π0(u)``, with the fitted log-log slope (T14 predicts about ``-1`` for
plain gradient descent, ``0`` for natural gradient).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.base_model import policy_from_config
from experiments.config import RunConfig
from experiments.dynamics_summary import build_summary, recovery_fit
from experiments.presets import preset
from experiments.train import get_base, write_json_atomic
from experiments.world import HARMFUL, make_world
from proofs_check.training import scale_by_inverse_prefix_mass
from toy_lm.engines import objectives, tree
from toy_lm.errors import ConfigError

__all__ = [
    "CHUNK",
    "Forced",
    "MIN_GAP",
    "RECOVERED_SHARE",
    "Setting",
    "TABULAR_OPTIMIZERS",
    "make_optimizer",
    "make_setting",
    "run_dynamics",
    "train_and_track",
]

#: A prefix "has recovered" once ``H^π_k(u) <= H*(u) + RECOVERED_SHARE (H0(u) - H*(u))``.
RECOVERED_SHARE = 0.5
#: Only prefixes where the optimum lowers ``H`` by at least this much enter the recovery fit.
MIN_GAP = 0.05
#: Optimizer steps per compiled chunk (every budget is a multiple of it).
CHUNK = 10
TABULAR_OPTIMIZERS = ("gd", "natural", "adam")

# Compiled once each (eager, their many small operations cost more than the training steps).
_cond_harm = jax.jit(tree.cond_harm)
_equilibrium = jax.jit(tree.equilibrium_policy)
_prefix_probs = jax.jit(tree.prefix_probs)
_harmful_prefix_dists = jax.jit(
    lambda base, harm: list(tree.harmful_prefix_dists(base, harm)[1 : len(base)])
)


@dataclasses.dataclass(frozen=True)
class Setting:
    """The experiment's knobs: world and ``λ`` from ``config``, learning rates, budgets, and the
    tabular optimizers (the transformer is trained with Adam; no transformer budgets: skipped)."""

    config: RunConfig
    transformer: RunConfig
    budgets: tuple[int, ...]
    transformer_budgets: tuple[int, ...]
    learning_rates: dict
    optimizers: tuple[str, ...] = TABULAR_OPTIMIZERS

    @property
    def lam(self) -> float:
        return self.config.align.lam


def make_setting(quick: bool) -> Setting:
    """Full: budgets ``10 ... 10^4`` for every optimizer; quick: tabular to 10^4, transformer to 30."""
    full = (10, 30, 100, 300, 1000, 3000, 10000)
    config = preset("quick" if quick else "default")
    transformer = preset("quick-transformer" if quick else "transformer")
    return Setting(
        config,
        transformer,
        full,
        (10, 30) if quick else full,
        {
            "gd": config.align.learning_rate,
            "natural": config.align.learning_rate,
            "adam": transformer.align.learning_rate,
        },
    )


def make_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """``gd``: plain gradient descent; ``natural``: Fisher-diagonal preconditioned; ``adam``."""
    if name == "gd":
        return optax.sgd(learning_rate)
    if name == "natural":
        return optax.chain(scale_by_inverse_prefix_mass(), optax.sgd(learning_rate))
    return optax.adam(learning_rate)


class Forced:
    """The forced prefixes of the prefill attack, ``k = 1 ... T-1``, split by ``det_k``."""

    def __init__(self, base, harm, determined):
        self.q = [np.asarray(q) for q in _harmful_prefix_dists(base, harm)]
        self.det = [np.asarray(determined[k], bool) for k in range(1, len(base))]
        self.decided_mass = np.array([np.sum(q * d) for q, d in zip(self.q, self.det)])
        self.undecided_mass = np.array([np.sum(q * ~d) for q, d in zip(self.q, self.det)])
        self.rows = [np.flatnonzero((q > 0) & ~d) for q, d in zip(self.q, self.det)]
        self.levels = np.concatenate([np.full(r.size, k) for k, r in enumerate(self.rows, 1)])

    def gather(self, values) -> jax.Array:
        """``H_k(u)`` at every undecided forced prefix, concatenated over ``k``."""
        return jnp.concatenate([values[k][r] for k, r in enumerate(self.rows, 1)])

    def parts(self, values) -> dict:
        """``ASR(k)`` and its decided and undecided parts from ``H^π`` (``values``), ``k = 1 ... T-1``."""
        values = [np.asarray(v) for v in values]
        decided = np.array(
            [np.sum(q * d * values[k]) for k, (q, d) in enumerate(zip(self.q, self.det), 1)]
        )
        undecided = np.array(
            [np.sum(q * ~d * values[k]) for k, (q, d) in enumerate(zip(self.q, self.det), 1)]
        )
        return {
            "asr": (decided + undecided).tolist(),
            "decided_part": decided.tolist(),
            "undecided_part": undecided.tolist(),
            "undecided_conditional": (undecided / np.maximum(self.undecided_mass, 1e-300)).tolist(),
        }


@functools.partial(jax.jit, static_argnames=("policy", "name", "learning_rate", "chunk"))
def _chunk(
    params,
    state,
    track,
    step0,
    base,
    harm,
    lam,
    rows,
    threshold,
    *,
    policy,
    name,
    learning_rate,
    chunk,
):
    """``chunk`` optimizer steps on ``L_λ``, tracking recovery at every undecided forced prefix.

    ``track = (recovered_at, mass, mass_at_recovery)``: the first step at which ``H^π_k(u)`` fell
    to ``threshold``, the running sum ``Σ_n P_{π_n}(u)`` over the steps taken, and that sum at
    recovery (T14: the subtree below ``u`` moves as if trained alone with steps ``η P_{π_n}(u)``).
    """
    tables_of = (lambda p: p) if policy is None else (lambda p: policy.level_tables(p, HARMFUL))
    loss = lambda p: objectives.kl_regularized_loss(tables_of(p), base, harm, lam)
    opt = make_optimizer(name, learning_rate)
    gather = lambda arrays: jnp.concatenate([arrays[k][r] for k, r in enumerate(rows, 1)])

    def step(carry, i):
        p, s, (rec, mass, mass_rec) = carry
        mass = mass + gather(tree.prefix_probs(tables_of(p)))
        updates, s = opt.update(jax.grad(loss)(p), s, p)
        p = optax.apply_updates(p, updates)
        newly = (rec < 0) & (gather(tree.cond_harm(tables_of(p), harm)) <= threshold)
        track = (jnp.where(newly, step0 + i + 1, rec), mass, jnp.where(newly, mass, mass_rec))
        return (p, s, track), None

    (params, state, track), _ = jax.lax.scan(step, (params, state, track), jnp.arange(chunk))
    return params, state, track


def train_and_track(
    params,
    base,
    harm,
    lam,
    forced: Forced,
    threshold,
    budgets,
    *,
    name: str,
    learning_rate: float,
    policy=None,
    log=print,
    label: str = "",
):
    """Train to ``max(budgets)`` steps; ``H^π`` at every budget and the recovery record per prefix.

    Returns:
      ``(snapshots {budget: parts}, recovered_at, mass_at_recovery, mass over all steps)``
      (``-1`` / ``0``: not recovered).
    """
    tables_of = (lambda p: p) if policy is None else (lambda p: policy.level_tables(p, HARMFUL))
    opt = make_optimizer(name, learning_rate)
    state = opt.init(params)
    # Strongly typed from the start: a weakly typed carry would recompile the chunk once.
    track = (
        jnp.full(threshold.shape, -1, dtype=int),
        jnp.zeros(threshold.shape),
        jnp.zeros(threshold.shape),
    )
    rows = tuple(jnp.asarray(r) for r in forced.rows)
    snapshots, done, start = {}, 0, time.perf_counter()
    while done < max(budgets):
        params, state, track = _chunk(
            params,
            state,
            track,
            done,
            base,
            harm,
            lam,
            rows,
            threshold,
            policy=policy,
            name=name,
            learning_rate=learning_rate,
            chunk=CHUNK,
        )
        done += CHUNK
        if done in budgets:
            snapshots[done] = forced.parts(_cond_harm(tables_of(params), harm))
            log(
                f"  {label or name}: {done} steps, undecided ASR "
                f"{np.mean(snapshots[done]['undecided_conditional']):.3f} "
                f"({time.perf_counter() - start:.0f} s)"
            )
    return snapshots, np.asarray(track[0]), np.asarray(track[2]), np.asarray(track[1])


def _family(params, base, harm, lam, forced, setting, budgets, optimizers, policy, log, prefix):
    """Base, optimum and trained rows of one policy family (tabular or transformer)."""
    h0 = np.asarray(forced.gather(_cond_harm(base, harm)))
    optimum = _equilibrium(base, harm, lam)
    h_star = np.asarray(forced.gather(_cond_harm(optimum, harm)))
    threshold = jnp.asarray(h_star + RECOVERED_SHARE * (h0 - h_star))
    fit_mask = (h0 - h_star) >= MIN_GAP
    probs = _prefix_probs(base)
    prob = np.concatenate([np.asarray(probs[k])[r] for k, r in enumerate(forced.rows, 1)])
    rows = {
        f"{prefix}base": forced.parts(_cond_harm(base, harm)),
        f"{prefix}optimum": forced.parts(_cond_harm(optimum, harm)),
    }
    trained, recovery = {}, {}
    for name in optimizers:
        lr = setting.learning_rates[name]
        snaps, rec, mass, total = train_and_track(
            params,
            base,
            harm,
            lam,
            forced,
            threshold,
            budgets,
            name=name,
            learning_rate=lr,
            policy=policy,
            log=log,
            label=prefix + name,
        )
        trained[prefix + name] = {str(b): s for b, s in snaps.items()}
        recovery[prefix + name] = recovery_fit(
            prob[fit_mask], rec[fit_mask], mass[fit_mask], total[fit_mask], max(budgets), lr
        )
    return rows, trained, recovery


def run_dynamics(out: str, quick: bool = False, log=print, setting: Setting | None = None) -> dict:
    """Run ``optimum-vs-dynamics`` into ``out``: ``summary.json`` and the figures."""
    from experiments import dynamics_figures

    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out} is not a folder")
    start = time.perf_counter()
    setting = setting or make_setting(quick)
    cfg = setting.config
    world = make_world(cfg.world)
    harm, lam = jnp.asarray(world.harm), setting.lam
    base = tuple(jnp.asarray(z) for z in world.behaviour[HARMFUL])
    forced = Forced(base, harm, world.determined)
    log(
        f"optimum-vs-dynamics: V={world.vocab_size}, T={world.length}, K={world.num_harmful}, "
        f"λ={lam}; {len(forced.levels)} undecided forced prefixes"
    )
    models, trained, recovery = _family(
        base, base, harm, lam, forced, setting, setting.budgets, setting.optimizers, None, log, ""
    )
    if setting.transformer_budgets:
        tcfg = setting.transformer
        policy = policy_from_config(tcfg.policy, world)
        log("  transformer: supervised base model (cached in OUT/bases) ...")
        tbase = get_base(tcfg, world, policy, out)
        t_tables = tuple(jnp.asarray(z) for z in tbase.tables[HARMFUL])
        t_forced = Forced(t_tables, harm, world.determined)
        rows, t_trained, t_recovery = _family(
            tbase.params,
            t_tables,
            harm,
            lam,
            t_forced,
            setting,
            setting.transformer_budgets,
            ("adam",),
            policy,
            log,
            "transformer_",
        )
        models.update(rows)
        trained.update(t_trained)
        recovery.update(t_recovery)
    summary = build_summary(
        setting, world, forced, models, trained, recovery, quick, time.perf_counter() - start
    )
    os.makedirs(out, exist_ok=True)
    summary["figures"] = dynamics_figures.make_figures(out, summary)
    write_json_atomic(os.path.join(out, "summary.json"), summary)
    return summary
