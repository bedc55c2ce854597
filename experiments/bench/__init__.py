"""``harm-horizon bench``: the benchmark suites, speed measured side by side in one run."""
