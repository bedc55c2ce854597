"""The exact engines: the tree specification, the level step and its drivers, the
optional Numba backend, the Markov DP engine and Monte Carlo."""
