"""``harm-horizon explore``: write the interactive teaching page (see :mod:`experiments.explorer`)."""

from __future__ import annotations

__all__ = ["register", "run"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "explore",
        help="write a self-contained interactive page of a small prefix tree",
        description="One HTML file, no network needed: the prefix tree with H_t, determined "
        "prefixes and logit gradients, I_t and the horizon, and a lambda slider "
        "showing pi*_lambda's per-position KL next to I_t/(2 lambda^2). Built-in "
        "instances, plus your own level tables with --tables (at most 256 leaves).",
    )
    p.add_argument("--out", required=True, metavar="FILE.html", help="where to write the page")
    p.add_argument(
        "--tables",
        metavar="F.npz",
        help="add your own tables (logits_0 ... logits_{T-1}, harm; V**T <= 256)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    import os

    from experiments.explorer import builtin_instances, user_instance, write_explorer
    from toy_lm.errors import InputError

    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise InputError(f"cannot write {args.out}: folder {folder} does not exist")
    from toy_lm.progress import heartbeat

    instances = [user_instance(args.tables)] if args.tables else []
    with heartbeat("explore", "computing every instance with the exact engine"):
        instances += builtin_instances()
        path = write_explorer(args.out, instances)
    print(f"wrote {path} ({len(instances)} instances; open it in a browser, no network needed)")
    return 0
