"""``harm-horizon analyze``: the full exact analysis of bring-your-own level tables.

Input: one ``.npz`` with ``logits_0 ... logits_{T-1}`` (``(V**l, V)``, canonical order), ``harm``
(``(V**T,)``) and optionally ``ref_logits_0 ... ref_logits_{T-1}``. Output: a per-position table (or
JSON) and, with ``--out``, an ``.npz`` whose keys are documented in :func:`output_arrays`.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from toy_lm.bounds import check_lam, check_seed
from toy_lm.cli_output import print_json, say
from toy_lm.errors import InputError
from toy_lm.io import read_tables
from toy_lm.outputs import check_output, json_text, save_npz
from toy_lm.tables import check_enumeration_size

__all__ = [
    "backend_line",
    "output_arrays",
    "print_table",
    "random_instance",
    "read_tables",
    "register",
    "report",
    "run",
    "summary",
]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="exact per-position analysis of level tables (.npz) or a random instance",
        description="Exact prefix-tree analysis: E[h], the horizon, I_t, |G| per level, "
        "determined fractions, and KL columns when a reference or --lam is given.",
    )
    p.add_argument(
        "tables",
        nargs="?",
        metavar="TABLES.npz",
        help="logits_0 ... logits_{T-1}, harm, optional ref_logits_*",
    )
    p.add_argument(
        "--random",
        nargs=3,
        type=int,
        metavar=("V", "T", "TAU"),
        help="analyze a random tabular policy with a harm decided by the first TAU tokens",
    )
    p.add_argument("--seed", type=int, default=0, help="PRNG seed for --random (default 0)")
    p.add_argument("--save-tables", metavar="FILE", help="with --random: save the instance as .npz")
    p.add_argument(
        "--lam",
        type=float,
        metavar="LAMBDA",
        help="also compute the equilibrium policy pi*_lambda and its per-position KL",
    )
    p.add_argument(
        "--mi",
        action="store_true",
        help="also compute the mutual-information form I_t^MI (binary harm only)",
    )
    p.add_argument("--out", metavar="OUT.npz", help="write every computed array to this .npz")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    d = p.add_argument_group(
        "distributed",
        "the sharded engine across processes (jax.distributed; README "
        "'Distributed'): per-level results only, --out without per-prefix tables",
    )
    d.add_argument(
        "--distributed",
        action="store_true",
        help="split the first tokens across processes (TABLES.npz, uncompressed)",
    )
    d.add_argument(
        "--local-processes",
        type=int,
        metavar="N",
        help="launch N processes on this machine (a free local port coordinates)",
    )
    d.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="process 0's address (default: detected from the cluster environment, e.g. SLURM)",
    )
    d.add_argument("--num-processes", type=int, metavar="N", help="processes in the run")
    d.add_argument("--process-id", type=int, metavar="I", help="this process, 0 ... N-1")
    d.add_argument(
        "--split",
        type=int,
        metavar="M",
        help="split level m: V**m subtrees are shared out (default: the smallest m "
        "with V**m >= the number of devices)",
    )
    d.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="give up (one line, exit 2) when the peers have not joined after "
        "SECONDS (default 120); when given, it also bounds the whole run",
    )
    p.set_defaults(func=run)


def random_instance(vocab_size: int, length: int, tau: int, seed: int):
    """A random tabular policy and a binary harm decided by the first ``tau`` tokens."""
    check_seed(seed, "--seed")
    if vocab_size < 2:
        raise InputError(f"V = {vocab_size}; the vocabulary needs V >= 2")
    if length < 1:
        raise InputError(f"T = {length}; responses need T >= 1")
    if not 0 <= tau <= length:
        raise InputError(f"TAU = {tau} must satisfy 0 <= TAU <= T = {length}")
    check_enumeration_size(vocab_size, length, what="the random instance")
    import jax  # after the checks: a refused instance never waits for JAX to load

    from toy_lm.models.harms import random_decided_harm
    from toy_lm.models.policies import TabularPolicy

    key_policy, key_harm = jax.random.split(jax.random.key(seed))
    policy = TabularPolicy(vocab_size, length)
    # The tabular parameters are the tables, read as numpy views of one flat draw.
    logits = [t[0] for t in policy.init_tables(key_policy)]
    harm = np.asarray(random_decided_harm(key_harm, vocab_size, length, tau))
    return logits, harm


def output_arrays(result, lam) -> dict[str, np.ndarray]:
    """The ``--out`` keys: ``expected_harm``, ``H_l``, ``grad_l``, ``determined_l``,
    ``harm_information``, ``horizon``; with ``--lam``: ``equilibrium_logits_l`` (log-probabilities of
    π*_λ) and ``equilibrium_kl``; with a reference: ``per_position_kl``; with ``--mi``:
    ``harm_information_mi``."""
    out = {
        "expected_harm": np.float64(result.expected_harm),
        "harm_information": result.harm_information,
        "horizon": np.int64(result.horizon),
    }
    out.update({f"H_{l}": h for l, h in enumerate(result.cond_harm)})
    out.update({f"grad_{l}": g for l, g in enumerate(result.logit_grads)})
    out.update({f"determined_{l}": d for l, d in enumerate(result.determined)})
    if lam is not None:
        out.update({f"equilibrium_logits_{l}": e for l, e in enumerate(result.equilibrium_logits)})
        out["equilibrium_kl"] = result.equilibrium_kl
    if result.per_position_kl is not None:
        out["per_position_kl"] = result.per_position_kl
    if result.harm_information_mi is not None:
        out["harm_information_mi"] = result.harm_information_mi
    return out


def summary(result, vocab_size: int, length: int, lam) -> dict:
    """JSON-ready summary: sizes, ``E[h]``, horizon and one record per position."""
    columns = {
        "harm_information": result.harm_information,
        "harm_information_mi": result.harm_information_mi,
        "grad_abs_sum": result.grad_abs_sum(),
        "determined_fraction": result.determined_fraction(),
        "equilibrium_kl": result.equilibrium_kl,
        "per_position_kl": result.per_position_kl,
    }
    positions = []
    for t in range(1, length + 1):
        row = {"position": t}
        row.update({k: float(v[t - 1]) for k, v in columns.items() if v is not None})
        positions.append(row)
    return {
        "vocab_size": vocab_size,
        "length": length,
        "expected_harm": result.expected_harm,
        "horizon": result.horizon,
        "lambda": lam,
        "positions": positions,
    }


def print_table(info: dict) -> None:
    from toy_lm.cli_output import Column
    from toy_lm.cli_output import print_table as show

    heads = {
        "position": "t",
        "harm_information": "I_t",
        "harm_information_mi": "I_t^MI (nats)",
        "grad_abs_sum": "Σ|G| (level t-1)",
        "determined_fraction": "determined y_<t",
        "equilibrium_kl": f"KL_t(π*_λ‖π), λ={info['lambda']}",
        "per_position_kl": "KL_t(π‖π_ref)",
    }
    show(
        f"V={info['vocab_size']}  T={info['length']}  E[h]={info['expected_harm']:.6g}  "
        f"horizon τ*={info['horizon']}",
        [Column(k, heads[k], "{:.4e}") for k in heads if k in info["positions"][0]],
        info["positions"],
    )


def backend_line(backend: str, vocab_size: int, length: int) -> str:
    """What the CLI says about the backend that ran (on stderr, after the analysis)."""
    from toy_lm.engines.analysis import NUMBA_MIN_RESPONSES

    large = vocab_size**length >= NUMBA_MIN_RESPONSES
    if backend == "numba":
        return (
            f"numba (compiled CPU kernels, float64; V**T = {vocab_size**length} >= "
            f"{NUMBA_MIN_RESPONSES})"
        )
    import jax.numpy as jnp

    # A large tree runs on XLA only when Numba is missing (choose_backend looked already).
    why = (
        'numba not installed: pip install "harm-horizon[numba]" for large trees'
        if large
        else f"V**T = {vocab_size**length} < {NUMBA_MIN_RESPONSES}"
    )
    return f"xla (JAX {jnp.dtype(jnp.result_type(float)).name}; {why})"


def report(args, result, arrays, vocab_size: int, length: int) -> None:
    """Print the table (or JSON) and write ``--out``."""
    info = summary(result, vocab_size, length, args.lam)
    if args.json:
        json_text(info)  # strict JSON (a NaN raises) before --out is written
    if args.out is not None:
        save_npz(args.out, arrays, tag="analyze", flag="--out")
        sys.stderr.write(f"wrote {args.out}\n")  # one write (a signal cannot split it)
    if args.json:
        print_json(info)
    else:
        print_table(info)


def run(args) -> int:
    from experiments.cli import distributed as cli_distributed

    cli_distributed.check_options(args)
    if args.distributed:
        return cli_distributed.run(args)
    if (args.tables is None) == (args.random is None):
        raise InputError("give exactly one of TABLES.npz or --random V T TAU")
    if args.lam is not None:
        check_lam(args.lam, "--lam")
    if args.save_tables is not None and args.random is None:
        raise InputError("--save-tables only applies to --random")
    for flag, path in (("--out", args.out), ("--save-tables", args.save_tables)):
        if path is not None:  # refuse before the (long) computation
            check_output(path, flag=flag, tag="analyze", inputs=[args.tables])
    if (
        args.out is not None
        and args.save_tables is not None
        and os.path.abspath(args.out) == os.path.abspath(args.save_tables)
    ):
        raise InputError(f"--out and --save-tables are the same file {args.out}; give two names")
    if args.random is not None:
        logits, harm = random_instance(*args.random, args.seed)
        ref = None
        if args.save_tables is not None:
            save_npz(
                args.save_tables,
                {**{f"logits_{l}": z for l, z in enumerate(logits)}, "harm": harm},
                tag="analyze",
                flag="--save-tables",
            )
            sys.stderr.write(f"wrote {args.save_tables}\n")  # one write (a signal cannot split it)
    else:
        logits, harm, ref = read_tables(args.tables)
    vocab_size, length = logits[0].shape[1], len(logits)
    from toy_lm.engines.analysis import analyze_tree, choose_backend  # after every check: refusals
    from toy_lm.progress import heartbeat  # do not load JAX

    backend = choose_backend(vocab_size, length)
    status = "analyzing"
    if backend == "numba":
        from toy_lm.engines.cpu_kernels import cached_on_disk

        if not cached_on_disk():
            status = (
                "compiling the Numba kernels (once after install, about a minute on 2 cores;"
                " cached on disk afterwards)"
            )
    if status != "analyzing":
        say(f"[analyze] {status}")
    with heartbeat("analyze", status):
        # The per-prefix tables only for --out: without them the analysis holds about a third of
        # the memory (first touches of fresh memory are slow on some VMs).
        result = analyze_tree(
            logits,
            harm,
            lam=args.lam,
            ref_logits=ref,
            mutual_information=args.mi,
            backend=backend,
            tables=args.out is not None,
        )
    # Which backend ran (after it ran: a refused input still ends with one line).
    say(f"[analyze] backend: {backend_line(backend, vocab_size, length)}")
    arrays = None if args.out is None else output_arrays(result, args.lam)
    report(args, result, arrays, vocab_size, length)
    return 0
