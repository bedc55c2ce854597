"""An interactive, self-contained HTML page for teaching: ``harm-horizon explore --out F.html``.

The page shows a small prefix tree level by level (each node coloured by ``H_l``, determined
prefixes ringed, edge widths ``π(v | y_<t)``), the logit gradient ``G(y_<t)_v`` of a selected node,
``I_t`` per position and the horizon ``τ*``, and, for a ``λ`` chosen on a log grid, ``π*_λ`` and its
per-position KL next to ``I_t / (2λ²)`` (THEORY.md T7). A control switches between built-in
instances (a harm decided by the first tokens, the refusal world, a soft harm) or the user's own
tables (``--tables``).

Every number shown for an instance as built comes from the exact engine (:func:`toy_lm.analyze_tree`,
float64), precomputed here for every ``λ`` of :data:`LAMBDA_GRID`. A teacher may flip a leaf's harm or drag
a conditional probability; the page then recomputes with ``explorer.js``, a small JavaScript
port of the same exact tree computation (trees of at most :data:`MAX_LEAVES` leaves), which
``tests/test_explorer.py`` holds to the engine within 1e-12 in a real browser.

The page loads nothing: data, script and style are inline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from toy_lm.errors import InputError
from toy_lm.outputs import write_text

__all__ = [
    "LAMBDA_GRID",
    "MAX_LEAVES",
    "SCRIPT",
    "STYLE",
    "builtin_instances",
    "engine_values",
    "page_data",
    "render_page",
    "user_instance",
    "write_explorer",
]

#: Largest tree the page accepts (``V**T`` leaves): drawn node by node, recomputed in JavaScript.
MAX_LEAVES = 256
#: The ``λ`` values of the slider: 41 points, log-spaced from 0.01 to 100.
LAMBDA_GRID = tuple(float(x) for x in np.logspace(-2, 2, 41))
SCRIPT = Path(__file__).with_name("explorer.js")


def builtin_instances() -> list[dict]:
    """The built-in instances: ``[{"name", "note", "logits" (T tables), "harm" (V**T,)}]``."""
    import jax

    from toy_lm.models.automata import automaton_harm_table, harmful_before_refusal
    from toy_lm.models.harms import random_decided_harm, soft_harm

    def tables(seed, vocab_size, length):  # a tabular policy: standard normal logits per prefix
        rng = np.random.default_rng(seed)
        return [rng.normal(size=(vocab_size**l, vocab_size)) for l in range(length)]

    dfa = harmful_before_refusal(3, 2, harmful_tokens=[1], refusal_tokens=[2])
    return [
        {
            "name": "decided by the first 2 tokens (V=3, T=4)",
            "note": "a random binary harm that depends only on y_1 y_2: nothing after position 2 "
            "can change it, so I_t = 0 and G = 0 there",
            "logits": tables(0, 3, 4),
            "harm": np.asarray(random_decided_harm(jax.random.key(1), 3, 4, 2), np.float64),
        },
        {
            "name": "refusal world (V=3, T=4)",
            "note": "tokens 0 neutral, 1 harmful, 2 refusal; harm = two harmful tokens before any "
            "refusal: a refusal settles the response safely at any position",
            "logits": tables(2, 3, 4),
            "harm": np.asarray(automaton_harm_table(dfa, 4), np.float64),
        },
        {
            "name": "soft harm (V=2, T=5)",
            "note": "a harm uniform on [0, 1] decided by the first 3 tokens",
            "logits": tables(3, 2, 5),
            "harm": np.asarray(soft_harm(jax.random.key(4), 2, 5, 3), np.float64),
        },
    ]


def user_instance(path: str) -> dict:
    """An instance from an ``analyze``-style ``.npz`` (``logits_*``, ``harm``), at most
    :data:`MAX_LEAVES` leaves (checked from the headers, before loading)."""
    from toy_lm.io import level_keys, npz_shapes, read_tables

    shapes = npz_shapes(path)
    keys = level_keys(shapes, "logits")
    if keys and "logits_0" in shapes and len(shapes["logits_0"][0]) == 2:
        leaves = int(shapes["logits_0"][0][1]) ** len(keys)
        if leaves > MAX_LEAVES:
            raise InputError(
                f"{path}: V**T = {leaves} leaves; the explorer draws and recomputes "
                f"trees of at most {MAX_LEAVES} leaves (use harm-horizon analyze)"
            )
    logits, harm, _ = read_tables(path)
    return {
        "name": f"your tables ({Path(path).name})",
        "note": f"read from {path}",
        "logits": [np.asarray(z, np.float64) for z in logits],
        "harm": np.asarray(harm, np.float64),
    }


def engine_values(logits, harm, lams=LAMBDA_GRID) -> dict:
    """Everything the page shows, by the exact engine (:func:`toy_lm.analyze_tree`, float64).

    Returns:
      ``{"H": [H_0 ... H_T], "G": [G_0 ... G_{T-1}] (flattened (V**l, V)), "I": I_t (T,),
      "determined": [det_0 ... det_T], "horizon": τ*, "expected_harm": E[h],
      "lams": [{"lam", "kl": KL_t(π*_λ ‖ π) (T,), "eq_harm": E_{π*}[h],
      "eq_probs": [π*_λ tables, flattened]}]}``.
    """
    from toy_lm.engines.analysis import analyze_tree
    from toy_lm.precision import check_x64

    check_x64("the explorer's analysis")
    logits = [np.asarray(z, np.float64) for z in logits]
    harm = np.asarray(harm, np.float64)
    flat = lambda tables: [np.asarray(t).reshape(-1).tolist() for t in tables]  # noqa: E731
    result = analyze_tree(logits, harm)
    out = {
        "H": flat(result.cond_harm),
        "G": flat(result.logit_grads),
        "I": np.asarray(result.harm_information).tolist(),
        "determined": [np.asarray(m).astype(int).tolist() for m in result.determined],
        "horizon": int(result.horizon),
        "expected_harm": float(result.expected_harm),
        "lams": [],
    }
    for lam in lams:
        at = analyze_tree(logits, harm, lam=lam)
        eq = [np.asarray(t, np.float64) for t in at.equilibrium_logits]  # log-probabilities
        out["lams"].append(
            {
                "lam": float(lam),
                "kl": np.asarray(at.equilibrium_kl).tolist(),
                "eq_harm": float(analyze_tree(eq, harm).expected_harm),
                "eq_probs": flat(np.exp(t) for t in eq),
            }
        )
    return out


def page_data(instances) -> dict:
    """The JSON the page embeds: each instance's tables and its engine values."""
    data = {"max_leaves": MAX_LEAVES, "lams": list(LAMBDA_GRID), "instances": []}
    for inst in instances:
        logits, harm = inst["logits"], inst["harm"]
        vocab_size, length = int(logits[0].shape[1]), len(logits)
        if vocab_size**length > MAX_LEAVES:
            raise InputError(f"{inst['name']}: {vocab_size**length} leaves, more than {MAX_LEAVES}")
        data["instances"].append(
            {
                "name": inst["name"],
                "note": inst["note"],
                "V": vocab_size,
                "T": length,
                "logits": [np.asarray(z).reshape(-1).tolist() for z in logits],
                "harm": np.asarray(harm).tolist(),
                "engine": engine_values(logits, harm),
            }
        )
    return data


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; } .note { color: #555; margin: 0.2em 0 0.8em; }
#controls { display: flex; gap: 2em; align-items: center; flex-wrap: wrap; margin-bottom: 0.8em; }
#main { display: flex; gap: 2em; align-items: flex-start; flex-wrap: wrap; }
#tree { border: 1px solid #ddd; background: #fcfcfc; }
#tree circle { cursor: pointer; } #tree .selected { stroke: #e69f00; stroke-width: 3; }
#tree .determined { stroke: #111; stroke-width: 2; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th { background: #f2f2f2; } #source { font-size: 0.85em; color: #555; }
.edited { color: #a04000; font-weight: bold; } input[type=range] { width: 14em; }
"""


def render_page(instances) -> str:
    """The complete HTML page (no external resources) for ``instances``."""
    data = json.dumps(page_data(instances), allow_nan=False).replace("</", "<\\/")
    script = SCRIPT.read_text(encoding="utf-8")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>harm-horizon explorer: where harm gets decided</title>
<style>{STYLE}</style></head><body>
<h1>Where harm gets decided, and where alignment can act</h1>
<p class="note">Each node is a prefix y<sub>&le;l</sub>, coloured by H<sub>l</sub> = E[h | prefix]
(blue 0 &rarr; red 1); a black ring marks a <em>determined</em> prefix (every continuation has
the same harm). Edge width is &pi;(v | prefix). Click a node to see its logit gradient
G = &part;E[h]/&part;z; click a leaf to flip its harm (1 &minus; h); drag a conditional
probability in the node panel. The slider sets &lambda; of the KL-regularized optimum
&pi;*<sub>&lambda;</sub> &prop; &pi; exp(&minus;h/&lambda;).</p>
<div id="controls">
 <label>instance <select id="instance"></select></label>
 <label>&lambda; <input id="lam" type="range" min="0" step="1" value="20">
  <span id="lam-value"></span></label>
 <button id="reset">reset edits</button>
 <span id="source"></span>
</div>
<p class="note" id="instance-note"></p>
<div id="main">
 <svg id="tree" xmlns="http://www.w3.org/2000/svg"></svg>
 <div>
  <div id="summary"></div>
  <table id="positions"></table>
  <svg id="chart" xmlns="http://www.w3.org/2000/svg" width="420" height="226"></svg>
  <div id="node"></div>
 </div>
</div>
<script>const EXPLORER_DATA = {data};</script>
<script>{script}</script>
</body></html>
"""


def write_explorer(path: str | os.PathLike, instances=None) -> Path:
    """Write the page (built-in instances unless given) to ``path`` atomically; returns it."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"cannot write {path}: folder {path.parent} does not exist")
    page = render_page(builtin_instances() if instances is None else instances)
    write_text(str(path), page, tag="explore")
    return path
