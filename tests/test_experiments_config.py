"""experiments.config: presets, validation (one-line ConfigError), files, overrides, hashing."""

import dataclasses
import json

import pytest

from experiments import config, presets
from experiments.config import ConfigError, RunConfig, with_overrides
from experiments.presets import load_config


def test_every_preset_is_valid_and_named():
    for name, cfg in presets.PRESETS.items():
        assert cfg.name == name
        config.validate(cfg)


def test_defaults_build_the_documented_world():
    cfg = RunConfig()
    assert cfg.world.vocab == config.ROLES
    assert (cfg.world.length, cfg.world.num_harmful) == (5, 3)
    assert cfg.align.objective == "rlhf" and cfg.align.optimizer == "sgd"


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"align.objective": "ppo"}, "unknown align.objective 'ppo'"),
        ({"world.num_harmful": 6}, "exceeds world.length"),
        ({"align.learning_rate": -0.1}, "align.learning_rate=-0.1 must be a positive number"),
        ({"base.learning_rate": 0.0}, "base.learning_rate=0.0 must be a positive number"),
        ({"align.lam": 0}, "align.lam"),
        ({"world.vocab": ["end", "refusal", "comply", "harmful"]}, "lacks the role(s) neutral"),
        (
            {"world.vocab": ["end", "refusal", "comply", "harmful", "neutral", "evil"]},
            "may only contain",
        ),
        ({"align.baseline": "value"}, "only applies to objective 'reinforce'"),
        ({"world.persistence": 1.5}, "world.persistence=1.5 must be a number in [0, 1]"),
        ({"policy.kind": "lstm"}, "unknown policy.kind 'lstm'"),
        ({"policy.d_model": 15}, "divisible"),
        ({"world.length": 9}, "too large"),
        ({"align.steps": 2.5}, "align.steps must be an integer"),
        ({"align.steps": "ten"}, "align.steps must be an integer"),
        ({"world.lenght": 5}, "unknown setting world.lenght"),
        ({"attack.objective": "magic"}, "unknown attack.objective"),
    ],
)
def test_bad_configurations_raise_one_line_errors(overrides, words):
    with pytest.raises(ConfigError) as err:
        with_overrides(RunConfig(), overrides)
    message = str(err.value)
    assert words in message
    assert "\n" not in message


def test_unknown_top_level_key_and_bad_section_type():
    with pytest.raises(ConfigError, match="unknown setting 'align_objective'"):
        config.config_from_dict({"align_objective": "dpo"})
    with pytest.raises(ConfigError, match=r"\[align\] must be a table"):
        config.config_from_dict({"align": 3})


def test_dict_round_trip_and_overrides():
    cfg = with_overrides(
        RunConfig(), {"align.objective": "dpo", "seed": 3, "measure.equilibrium_lams": [2, 4]}
    )
    assert cfg.align.objective == "dpo" and cfg.seed == 3
    assert cfg.measure.equilibrium_lams == (2.0, 4.0)
    again = config.config_from_dict(config.config_to_dict(cfg))
    assert again == cfg
    flat = config.flat_config(cfg)
    assert flat["align.objective"] == "dpo" and flat["world.vocab"] == json.dumps(
        list(config.ROLES)
    )


def test_hash_ignores_the_name_and_sees_every_setting():
    cfg = RunConfig()
    assert config.config_hash(cfg) == config.config_hash(dataclasses.replace(cfg, name="other"))
    assert config.config_hash(cfg) != config.config_hash(with_overrides(cfg, {"align.lam": 0.31}))
    assert len(config.config_hash(cfg)) == 12


def test_load_from_preset_toml_and_json(tmp_path):
    assert load_config("quick") is presets.PRESETS["quick"]
    toml = tmp_path / "run.toml"
    toml.write_text(
        'preset = "tiny"\nseed = 4\n[align]\nobjective = "augmentation"\n'
        "[sweep]\ngrid = {seed = [1, 2]}\n"
    )
    cfg = load_config(str(toml))
    assert (cfg.seed, cfg.align.objective, cfg.world.length) == (4, "augmentation", 4)
    js = tmp_path / "run.json"
    js.write_text(json.dumps({"align": {"objective": "dpo", "beta": 0.5}}))
    cfg = load_config(str(js))
    assert cfg.align.beta == 0.5 and cfg.name == "default"


@pytest.mark.parametrize(
    "content, suffix, words",
    [
        ("[align\nobjective = 1", ".toml", "cannot parse"),
        ("{not json", ".json", "cannot parse"),
        ("x = 1", ".yaml", "must end in .toml or .json"),
        ('preset = "huge"', ".toml", "unknown preset 'huge'"),
    ],
)
def test_bad_files(tmp_path, content, suffix, words):
    path = tmp_path / f"cfg{suffix}"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_missing_file_names_the_presets():
    with pytest.raises(ConfigError, match="not a preset name"):
        load_config("no/such/file.toml")
