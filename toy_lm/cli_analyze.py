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
from toy_lm.errors import EnumerationTooLarge, InputError
from toy_lm.io import level_keys, load_npz, npz_nbytes, npz_shapes
from toy_lm.outputs import check_output, json_text, save_npz
from toy_lm.tables import (check_enumeration_size, human_bytes, level_size, memory_budget,
                           validate_harm, validate_tables)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze", help="exact per-position analysis of level tables (.npz) or a random instance",
        description="Exact prefix-tree analysis: E[h], the horizon, I_t, |G| per level, "
                    "determined fractions, and KL columns when a reference or --lam is given.")
    p.add_argument("tables", nargs="?", metavar="TABLES.npz",
                   help="logits_0 ... logits_{T-1}, harm, optional ref_logits_*")
    p.add_argument("--random", nargs=3, type=int, metavar=("V", "T", "TAU"),
                   help="analyze a random tabular policy with a harm decided by the first TAU tokens")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed for --random (default 0)")
    p.add_argument("--save-tables", metavar="FILE", help="with --random: save the instance as .npz")
    p.add_argument("--lam", type=float, metavar="LAMBDA",
                   help="also compute the equilibrium policy pi*_lambda and its per-position KL")
    p.add_argument("--mi", action="store_true",
                   help="also compute the mutual-information form I_t^MI (binary harm only)")
    p.add_argument("--out", metavar="OUT.npz", help="write every computed array to this .npz")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    d = p.add_argument_group(
        "distributed", "the sharded engine across processes (jax.distributed; README "
        "'Distributed'): per-level results only, --out without per-prefix tables")
    d.add_argument("--distributed", action="store_true",
                   help="split the first tokens across processes (TABLES.npz, uncompressed)")
    d.add_argument("--local-processes", type=int, metavar="N",
                   help="launch N processes on this machine (a free local port coordinates)")
    d.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (default: "
                   "detected from the cluster environment, e.g. SLURM)")
    d.add_argument("--num-processes", type=int, metavar="N", help="processes in the run")
    d.add_argument("--process-id", type=int, metavar="I", help="this process, 0 ... N-1")
    d.add_argument("--split", type=int, metavar="M",
                   help="split level m: V**m subtrees are shared out (default: the smallest m "
                        "with V**m >= the number of devices)")
    d.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="give up (one line, exit 2) when the peers have not joined after "
                        "SECONDS (default 120); when given, it also bounds the whole run")
    p.set_defaults(func=run)


def table_keys(path: str):
    """``(shapes, logits keys, ref_logits keys, V, T)`` of a tables ``.npz``, from its headers
    only: keys present, consistent ``V`` and ``T``, real dtypes."""
    shapes = npz_shapes(path)
    keys = level_keys(shapes, "logits")
    if not keys:
        raise InputError(f"{path} has no logits_0 ... logits_(T-1) arrays (T = 0): need T >= 1")
    if "harm" not in shapes:
        raise InputError(f"{path} has no 'harm' array (shape (V**T,))")
    first = shapes["logits_0"][0]
    if len(first) != 2 or first[0] != 1:
        raise InputError(f"logits_0 must have shape (1, V), got {first}")
    vocab_size, length = int(first[1]), len(keys)
    if vocab_size < 2:
        raise InputError(f"V = {vocab_size} (from logits_0); the vocabulary needs V >= 2")
    ref_keys = level_keys(shapes, "ref_logits")
    if ref_keys and len(ref_keys) != length:
        raise InputError(f"{len(ref_keys)} ref_logits_* tables for T = {length} logits tables; "
                         "give all of ref_logits_0 ... ref_logits_(T-1) or none")
    for key in keys + ref_keys:
        level = int(key.rsplit("_", 1)[1])
        expected = (level_size(vocab_size, level), vocab_size)
        if shapes[key][0] != expected:
            raise InputError(f"{key} has shape {shapes[key][0]}, expected {expected} "
                             f"(V = {vocab_size} from logits_0, T = {length})")
    if shapes["harm"][0] != (level_size(vocab_size, length),):
        raise InputError(f"harm has shape {shapes['harm'][0]}, expected "
                         f"({level_size(vocab_size, length)},) = (V**T,) for V = {vocab_size}, "
                         f"T = {length}")
    for key in keys + ref_keys + ["harm"]:
        if shapes[key][1].kind not in ("biuf" if key == "harm" else "iuf"):
            raise InputError(f"{key} has dtype {shapes[key][1]}; it must hold real numbers")
    return shapes, keys, ref_keys, vocab_size, length


def read_tables(path: str):
    """``(logits, harm, ref_logits or None)`` from an ``.npz``, checked header-first.

    Every check that needs only shapes (keys present, consistent ``V`` and ``T``, enumeration
    size) runs before any array is loaded.
    """
    shapes, keys, ref_keys, vocab_size, length = table_keys(path)
    need = check_enumeration_size(vocab_size, length, what=f"analyzing {path}")
    loaded = npz_nbytes(shapes, keys + ref_keys + ["harm"])
    if need + loaded > memory_budget():   # inputs in a wider dtype than float64, or many refs
        raise EnumerationTooLarge(f"analyzing {path} needs about {human_bytes(need + loaded)} "
                                  f"(the analysis and the {human_bytes(loaded)} of arrays read), "
                                  f"more than the {human_bytes(memory_budget())} available")
    data = load_npz(path, keys + ref_keys + ["harm"])
    logits = [data[k] for k in keys]
    validate_tables(logits, "logits")
    harm = validate_harm(data["harm"], vocab_size, length)
    ref = [data[k] for k in ref_keys] or None
    if ref is not None:
        validate_tables(ref, "ref_logits")
    return logits, harm, ref


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
    import jax   # after the checks: a refused instance never waits for JAX to load

    from toy_lm.models.harms import random_decided_harm
    from toy_lm.models.policies import TabularPolicy

    key_policy, key_harm = jax.random.split(jax.random.key(seed))
    policy = TabularPolicy(vocab_size, length)
    logits = [np.asarray(t) for t in policy.level_tables(policy.init(key_policy))]
    harm = np.asarray(random_decided_harm(key_harm, vocab_size, length, tau))
    return logits, harm


def output_arrays(result, lam) -> dict[str, np.ndarray]:
    """The ``--out`` keys: ``expected_harm``, ``H_l``, ``grad_l``, ``determined_l``,
    ``harm_information``, ``horizon``; with ``--lam``: ``equilibrium_logits_l`` (log-probabilities of
    π*_λ) and ``equilibrium_kl``; with a reference: ``per_position_kl``; with ``--mi``:
    ``harm_information_mi``."""
    out = {"expected_harm": np.float64(result.expected_harm),
           "harm_information": result.harm_information,
           "horizon": np.int64(result.horizon)}
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
    return {"vocab_size": vocab_size, "length": length, "expected_harm": result.expected_harm,
            "horizon": result.horizon, "lambda": lam, "positions": positions}


def print_table(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    heads = {"position": "t", "harm_information": "I_t", "harm_information_mi": "I_t^MI (nats)",
             "grad_abs_sum": "Σ|G| (level t-1)", "determined_fraction": "determined y_<t",
             "equilibrium_kl": f"KL_t(π*_λ‖π), λ={info['lambda']}", "per_position_kl": "KL_t(π‖π_ref)"}
    cols = [k for k in heads if k in info["positions"][0]]
    from rich.text import Text

    table = Table(title=Text(f"V={info['vocab_size']}  T={info['length']}  "
                             f"E[h]={info['expected_harm']:.6g}  horizon τ*={info['horizon']}"))
    for k in cols:
        table.add_column(heads[k], justify="right")
    for row in info["positions"]:
        table.add_row(*(str(row[k]) if k == "position" else f"{row[k]:.4e}" for k in cols))
    Console().print(table)


def backend_line(backend: str, vocab_size: int, length: int) -> str:
    """What the CLI says about the backend that ran (on stderr, after the analysis)."""
    from toy_lm.engines.analysis import NUMBA_MIN_RESPONSES

    large = vocab_size ** length >= NUMBA_MIN_RESPONSES
    if backend == "numba":
        return (f"numba (compiled CPU kernels, float64; V**T = {vocab_size ** length} >= "
                f"{NUMBA_MIN_RESPONSES})")
    import jax.numpy as jnp

    # A large tree runs on XLA only when Numba is missing (choose_backend looked already).
    why = ('numba not installed: pip install "harm-horizon[numba]" for large trees' if large
           else f"V**T = {vocab_size ** length} < {NUMBA_MIN_RESPONSES}")
    return f"xla (JAX {jnp.dtype(jnp.result_type(float)).name}; {why})"


def report(args, result, arrays, vocab_size: int, length: int) -> None:
    """Print the table (or JSON) and write ``--out``."""
    info = summary(result, vocab_size, length, args.lam)
    text = json_text(info, indent=2) if args.json else None   # strict JSON: never NaN
    if args.out is not None:
        save_npz(args.out, arrays, tag="analyze", flag="--out")
        print(f"wrote {args.out}", file=sys.stderr)
    if args.json:
        print(text)
    else:
        print_table(info)


def run(args) -> int:
    from toy_lm import cli_distributed

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
        if path is not None:   # refuse before the (long) computation
            check_output(path, flag=flag, tag="analyze", inputs=[args.tables])
    if (args.out is not None and args.save_tables is not None
            and os.path.abspath(args.out) == os.path.abspath(args.save_tables)):
        raise InputError(f"--out and --save-tables are the same file {args.out}; give two names")
    if args.random is not None:
        logits, harm = random_instance(*args.random, args.seed)
        ref = None
        if args.save_tables is not None:
            save_npz(args.save_tables, {**{f"logits_{l}": z for l, z in enumerate(logits)},
                                        "harm": harm}, tag="analyze", flag="--save-tables")
            print(f"wrote {args.save_tables}", file=sys.stderr)
    else:
        logits, harm, ref = read_tables(args.tables)
    vocab_size, length = logits[0].shape[1], len(logits)
    from toy_lm.engines.analysis import analyze_tree, choose_backend   # after every check: refusals
    from toy_lm.progress import heartbeat                        # do not load JAX

    backend = choose_backend(vocab_size, length)
    status = "analyzing"
    if backend == "numba":
        from toy_lm.engines.cpu_kernels import cached_on_disk

        if not cached_on_disk():
            status = ("compiling the Numba kernels (once after install, about a minute on 2 cores;"
                      " cached on disk afterwards)")
    if status != "analyzing":
        print(f"[analyze] {status}", file=sys.stderr, flush=True)
    with heartbeat("analyze", status):
        result = analyze_tree(logits, harm, lam=args.lam, ref_logits=ref,
                              mutual_information=args.mi, backend=backend)
    # Which backend ran (after it ran: a refused input still ends with one line).
    print(f"[analyze] backend: {backend_line(backend, vocab_size, length)}", file=sys.stderr,
          flush=True)
    report(args, result, output_arrays(result, args.lam), vocab_size, length)
    return 0
