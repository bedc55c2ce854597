"""Settings of a small refusal world for tests that train whole runs (imported by test modules)."""

#: A small refusal world (V = 5, T = 2) and short runs: the programs compile in seconds.
SMALL = {
    "world.length": 2,
    "world.num_harmful": 1,
    "base.steps": 30,
    "align.steps": 6,
    "attack.steps": 2,
    "measure.num_paths": 4,
    "measure.equilibrium_lams": [3.0, 30.0],
}
