"""Numbered teaching demonstrations (percent-format scripts, ``# %%`` cells).

Run one as a script (``python experiments/demos/01_harm_martingale.py``), open it as a notebook
(jupytext, VS Code, Spyder), or run them all and build the HTML report with
``harm-horizon demo --out DIR``. Each demo starts with the question it answers and ends with what
the reader should now believe and why.
"""
