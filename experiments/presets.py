"""Built-in configurations and configuration files.

A configuration comes from :func:`load_config`:

* a built-in preset name (:data:`PRESETS`): ``default`` (the refusal world of
  :class:`~experiments.config.WorldConfig`, tabular policies, plain gradient descent), ``quick``
  (fewer steps), ``tiny`` (``T = 4``, ``K = 2``, for tests), ``transformer``,
  ``quick-transformer`` (a shared-weight causal transformer trained with Adam) and ``markov``;
* a ``.toml`` or ``.json`` file whose top-level ``preset`` key (optional, default ``default``)
  names the preset it starts from and whose other keys override it section by section::

      preset = "quick"
      seed = 1
      [align]
      objective = "augmentation"
"""

from __future__ import annotations

import json
import os
import tomllib

from experiments.config import RunConfig, config_from_dict, with_overrides
from toy_lm.errors import ConfigError, InputError
from toy_lm.io import open_input

__all__ = [
    "MAX_CONFIG_BYTES",
    "PRESETS",
    "config_from_source",
    "load_config",
    "preset",
    "read_config_file",
]


# -- presets and files --------------------------------------------------------------------------
def _presets() -> dict[str, RunConfig]:
    default = RunConfig(name="default")
    quick = with_overrides(
        default, {"name": "quick", "base.steps": 300, "align.steps": 200, "measure.num_paths": 16}
    )
    tiny = with_overrides(
        default,
        {
            "name": "tiny",
            "world.length": 4,
            "world.num_harmful": 2,
            "base.steps": 150,
            "align.steps": 40,
            "attack.steps": 4,
            "measure.num_paths": 4,
            "measure.equilibrium_lams": [3.0, 30.0],
        },
    )
    transformer_overrides = {
        "policy.kind": "transformer",
        "base.steps": 600,
        "base.learning_rate": 0.01,
        "align.optimizer": "adam",
        "align.learning_rate": 0.01,
        "align.grad_map_every": 5,
        "attack.optimizer": "adam",
        "attack.learning_rate": 0.01,
    }
    transformer = with_overrides(default, {"name": "transformer", **transformer_overrides})
    quick_transformer = with_overrides(
        quick,
        {
            "name": "quick-transformer",
            **transformer_overrides,
            "base.steps": 400,
            "align.steps": 150,
        },
    )
    markov = with_overrides(default, {"name": "markov", "policy.kind": "markov"})
    return {c.name: c for c in (default, quick, tiny, transformer, quick_transformer, markov)}


PRESETS: dict[str, RunConfig] = _presets()


#: Configuration files larger than this are refused unread (a real one is a few hundred bytes).
MAX_CONFIG_BYTES = 2**20


def read_config_file(path: str) -> dict:
    """The raw dict of a ``.toml`` or ``.json`` configuration file (a regular file of at most
    :data:`MAX_CONFIG_BYTES`, valid UTF-8)."""
    if not path.endswith((".toml", ".json")):
        if not os.path.exists(path):
            raise ConfigError(
                f"cannot read configuration {path}: no such file, and not a preset "
                f"name ({', '.join(PRESETS)})"
            )
        raise ConfigError(f"configuration file {path} must end in .toml or .json")
    try:
        with open_input(path, "configuration") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except InputError as err:
        hint = "" if os.path.exists(path) else f", and not a preset name ({', '.join(PRESETS)})"
        raise ConfigError(f"{err}{hint}") from None
    except OSError as err:
        raise ConfigError(f"cannot read configuration {path}: {err.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"configuration {path} is larger than {MAX_CONFIG_BYTES} bytes; a "
            "configuration states a few settings"
        )
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text) if path.endswith(".toml") else json.loads(text)
    except UnicodeDecodeError as err:
        raise ConfigError(f"cannot parse {path}: not valid UTF-8 (byte {err.start})") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot parse {path}: {err}".replace("\n", " ")) from None
    except RecursionError:
        raise ConfigError(f"cannot parse {path}: nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be an object of settings")
    return data


def preset(name: str) -> RunConfig:
    """A built-in configuration by name."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def config_from_source(data: dict) -> RunConfig:
    """A config from a file's dict: its ``preset`` (default ``default``) plus its overrides."""
    data = dict(data)
    start = preset(data.pop("preset", "default"))
    return config_from_dict(data, start)


def load_config(spec: str) -> RunConfig:
    """A :class:`RunConfig` from a preset name or a ``.toml``/``.json`` file path."""
    if spec in PRESETS:
        return PRESETS[spec]
    data = read_config_file(spec)
    data.pop("sweep", None)
    return config_from_source(data)
