"""``harm-horizon analyze-markov``: the dynamic-programming analysis of a Markov policy and an
automaton harm, for responses far too long to enumerate.

Input: one ``.npz`` with ``markov_logits`` ``(T, V**k, V)`` (row ``c`` of position ``t`` holds the
logits after the context ``c``: the last ``k`` tokens read as a base-``V`` number, left-padded
with token 0 for the first positions; the order ``k`` is inferred from ``V**k``),
``dfa_transitions`` (int, ``(S, V)``), ``dfa_verdict`` (harm of each final state, ``(S,)``, in
``[0, 1]``) and ``dfa_start`` (int). Output: a per-position table (or JSON) and, with ``--out``,
an ``.npz`` whose keys :func:`output_arrays` documents.
"""

from __future__ import annotations

import sys

import numpy as np

from toy_lm.bounds import check_lam
from toy_lm.cli_output import print_json
from toy_lm.errors import EnumerationTooLarge, InputError
from toy_lm.io import load_npz, npz_nbytes, npz_shapes
from toy_lm.outputs import check_output, json_text, save_npz
from toy_lm.tables import human_bytes, memory_budget

__all__ = [
    "KEYS",
    "TABLE_ROWS",
    "output_arrays",
    "print_table",
    "read_model",
    "register",
    "run",
    "summary",
]

KEYS = ("markov_logits", "dfa_transitions", "dfa_verdict", "dfa_start")
#: Rows of the per-position table printed without ``--json`` (the rest go to --json / --out).
TABLE_ROWS = 24


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze-markov",
        help="dynamic-programming analysis of a Markov policy and an automaton harm (.npz)",
        description="Exact analysis by dynamic programming over (context x automaton state): "
        "E[h], the horizon, I_t, and with --lam the equilibrium KL per position.",
    )
    p.add_argument(
        "model",
        metavar="MODEL.npz",
        nargs="?",
        help="markov_logits (T, V**k, V), dfa_transitions (S, V), dfa_verdict (S,), "
        "dfa_start (format: toy_lm.models.markov_model)",
    )
    p.add_argument(
        "--random",
        nargs=3,
        type=int,
        metavar=("V", "T", "K"),
        help="analyze a random order-K Markov policy with the harm 'two harmful tokens "
        "(1) before any refusal (2)' instead of a file (V >= 3)",
    )
    p.add_argument("--seed", type=int, default=0, help="PRNG seed for --random (default 0)")
    p.add_argument(
        "--save-model",
        metavar="FILE",
        help="with --random: save the model as .npz (the input format of MODEL.npz)",
    )
    p.add_argument(
        "--lam",
        type=float,
        metavar="L",
        help="also compute the equilibrium pi*_lambda and KL_t(pi*_lambda || pi)",
    )
    p.add_argument("--out", metavar="OUT.npz", help="write the computed arrays to this .npz")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def _check_shapes(path: str, shapes: dict) -> tuple[int, int, int, int]:
    """``(T, C, V, S)`` from the headers alone, or :class:`InputError` naming the key."""
    missing = [k for k in KEYS if k not in shapes]
    if missing:
        raise InputError(
            f"{path} lacks {', '.join(missing)}; make a model file with "
            "toy_lm.models.markov_model.save_markov_model or analyze-markov --random V T K "
            "--save-model FILE"
        )
    (logits_shape, logits_dtype), (trans_shape, trans_dtype) = (
        shapes["markov_logits"],
        shapes["dfa_transitions"],
    )
    if len(logits_shape) != 3 or logits_shape[0] < 1 or logits_shape[2] < 2:
        raise InputError(
            f"markov_logits has shape {logits_shape}; expected (T, V**k, V) with T >= 1 and V >= 2"
        )
    length, contexts, vocab_size = logits_shape
    if logits_dtype.kind not in "iuf":
        raise InputError(
            f"markov_logits has dtype {logits_dtype}; logits must be real numbers "
            "(integer or floating)"
        )
    if len(trans_shape) != 2 or trans_shape[1] != vocab_size or trans_shape[0] < 1:
        raise InputError(
            f"dfa_transitions has shape {trans_shape}; expected (S, V) with "
            f"V = {vocab_size} as in markov_logits"
        )
    if trans_dtype.kind not in "iu":
        raise InputError(f"dfa_transitions has dtype {trans_dtype}; it must hold integer states")
    num_states = trans_shape[0]
    if shapes["dfa_verdict"][0] != (num_states,):
        raise InputError(
            f"dfa_verdict has shape {shapes['dfa_verdict'][0]}; expected "
            f"(S,) = ({num_states},), one harm value per automaton state"
        )
    if shapes["dfa_verdict"][1].kind not in "biuf":
        raise InputError(
            f"dfa_verdict has dtype {shapes['dfa_verdict'][1]}; it must hold real numbers in [0, 1]"
        )
    start_shape, start_dtype = shapes["dfa_start"]
    if start_shape not in ((), (1,)) or start_dtype.kind not in "iu":
        raise InputError(
            f"dfa_start must be one integer state, got shape {start_shape} and dtype {start_dtype}"
        )
    return length, contexts, vocab_size, num_states


def _check_memory(
    path: str, shapes: dict, length: int, contexts: int, vocab_size: int, num_states: int
) -> None:
    """Refuse, before loading, a model that would not fit: every array of the file once loaded,
    its float64/int64 copies, and the engine's tables over (level, context, state) with the
    context axis lifted to order >= 1 (``C >= V``): about six ``(T+1, C, S)`` tables, two
    ``(T, C, V)`` logit tables, and four ``(S, V)`` transition-sized work arrays."""
    lifted = max(contexts, vocab_size)
    engine = 8 * (
        6 * (length + 1) * lifted * num_states
        + 2 * length * lifted * vocab_size
        + 4 * num_states * vocab_size
        + 4 * (length + 1) * num_states
    )
    need = npz_nbytes(shapes, KEYS) + 8 * length * contexts * vocab_size + engine
    budget = memory_budget()
    if need > budget:
        raise EnumerationTooLarge(
            f"{path}: the dynamic programme at T={length}, V**k={contexts} (lifted to "
            f"{lifted}), V={vocab_size}, S={num_states} needs about {human_bytes(need)}, more "
            f"than the {human_bytes(budget)} available; use a lower order, fewer automaton states, "
            "a smaller V or a shorter T (limit set by HARM_HORIZON_MEMORY_LIMIT)"
        )


def read_model(path: str):
    """``(logits, dfa)`` from an ``.npz``, checked header-first, then values."""
    shapes = npz_shapes(path)
    length, contexts, vocab_size, num_states = _check_shapes(path, shapes)
    _check_memory(path, shapes, length, contexts, vocab_size, num_states)
    from toy_lm.engines.markov import markov_order
    from toy_lm.models.automata import make_automaton  # after the header checks (JAX loads here)

    markov_order(vocab_size, contexts)
    data = load_npz(path, KEYS)
    logits = np.asarray(data["markov_logits"], np.float64)
    if not np.all(np.isfinite(logits)):
        bad = int(logits.size - np.count_nonzero(np.isfinite(logits)))
        raise InputError(
            f"markov_logits has {bad} non-finite entries (NaN or inf); logits must "
            "be finite (use e.g. -30 for a near-zero probability)"
        )
    dfa = make_automaton(
        data["dfa_transitions"],
        data["dfa_verdict"],
        int(np.asarray(data["dfa_start"]).reshape(-1)[0]),
    )
    return logits, dfa


def output_arrays(result, lam) -> dict[str, np.ndarray]:
    """The ``--out`` keys: ``expected_harm``, ``harm_information`` ``(T,)``, ``horizon``,
    ``cond_harm`` ``(T+1, C, S)`` (H per level, context, state; context axis of order >= 1),
    ``determined`` ``(T+1, S)``; with ``--lam``: ``equilibrium_kl`` ``(T,)``,
    ``equilibrium_harm`` and ``log_partition`` ``(T+1, C, S)``."""
    out = {
        "expected_harm": np.float64(result.expected_harm),
        "harm_information": result.harm_information,
        "horizon": np.int64(result.horizon),
        "cond_harm": result.cond_harm,
        "determined": result.determined,
    }
    if lam is not None:
        out.update(
            equilibrium_kl=result.equilibrium_kl,
            equilibrium_harm=np.float64(result.equilibrium_harm),
            log_partition=result.log_partition,
        )
    return out


def summary(result, logits_shape, num_states: int, lam) -> dict:
    """JSON-ready summary: sizes, ``E[h]``, the horizon and one record per position."""
    length, contexts, vocab_size = logits_shape
    from toy_lm.engines.markov import markov_order

    reach_det = result.determined[:-1]
    positions = []
    for t in range(1, length + 1):
        row = {
            "position": t,
            "harm_information": float(result.harm_information[t - 1]),
            "determined_states": int(reach_det[t - 1].sum()),
        }
        if lam is not None:
            row["equilibrium_kl"] = float(result.equilibrium_kl[t - 1])
        positions.append(row)
    info = {
        "vocab_size": vocab_size,
        "length": length,
        "order": markov_order(vocab_size, contexts),
        "num_states": num_states,
        "expected_harm": result.expected_harm,
        "horizon": result.horizon,
        "lambda": lam,
    }
    if lam is not None:
        info["equilibrium_harm"] = result.equilibrium_harm
    info["positions"] = positions
    return info


def print_table(info: dict) -> None:
    from toy_lm.cli_output import Column
    from toy_lm.cli_output import print_table as show

    heads = {
        "position": "t",
        "harm_information": "I_t",
        "determined_states": "determined states (of S) at level t-1",
        "equilibrium_kl": f"KL_t(π*_λ‖π), λ={info['lambda']}",
    }
    more = info["length"] - TABLE_ROWS
    show(
        f"V={info['vocab_size']}  T={info['length']}  order={info['order']}  "
        f"S={info['num_states']}  E[h]={info['expected_harm']:.6g}  horizon τ*={info['horizon']}",
        [Column(k, heads[k], "{:.4e}") for k in heads if k in info["positions"][0]],
        info["positions"][:TABLE_ROWS],
        caption=f"... {more} more positions (use --json or --out)" if more > 0 else None,
    )


def run(args) -> int:
    if args.lam is not None:
        check_lam(args.lam, "--lam")
    if (args.model is None) == (args.random is None):
        raise InputError("give exactly one of MODEL.npz or --random V T K")
    if args.save_model and args.random is None:
        raise InputError("--save-model only applies to --random")
    if args.out is not None:  # refuse before the computation
        check_output(args.out, flag="--out", tag="analyze-markov", inputs=[args.model])
    if args.save_model is not None:
        check_output(args.save_model, flag="--save-model", tag="analyze-markov")
    if args.random is not None:
        from toy_lm.models.markov_model import random_markov_model, save_markov_model

        logits, dfa = random_markov_model(args.seed, *args.random)
        if args.save_model:
            save_markov_model(args.save_model, logits, dfa)
            sys.stderr.write(f"wrote {args.save_model}\n")  # one write (a signal cannot split it)
    else:
        logits, dfa = read_model(args.model)
    from toy_lm.engines.markov_analysis import analyze_markov

    result = analyze_markov(logits, dfa, lam=args.lam)
    info = summary(result, logits.shape, dfa.num_states, args.lam)
    if args.json:
        json_text(info)  # strict JSON (a NaN raises) before --out is written
    if args.out is not None:
        save_npz(args.out, output_arrays(result, args.lam), tag="analyze-markov", flag="--out")
        sys.stderr.write(f"wrote {args.out}\n")  # one write (a signal cannot split it)
    if args.json:
        print_json(info)
    else:
        print_table(info)
    return 0
