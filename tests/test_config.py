"""Config loading: TOML files, key=value overrides, type conversion, and refusing unknown keys."""

import dataclasses
import typing

import pytest

from minichord.config import (ConfigError, ModelConfig, SamplerConfig, apply_overrides, from_dict,
                              load_config, to_dict)


@dataclasses.dataclass
class RunConfig:
    """A stand-in for a train config: nested tables, lists, optionals."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    lr: float = 1e-3
    steps: int = 100
    name: str = "run"
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    budget: typing.Optional[int] = None
    limit: int | None = None  # PEP 604 spelling of the same thing


def test_unknown_key_names_the_nearest_valid_key():
    with pytest.raises(ConfigError, match="unknown key 'n_layer'; did you mean 'n_layers'"):
        from_dict(ModelConfig, {"n_layer": 2})
    with pytest.raises(ConfigError, match="'dimm'.*did you mean 'dim'"):
        load_config(RunConfig, overrides=["model.dimm=64"])
    with pytest.raises(ConfigError, match="'temprature'.*did you mean 'temperature'"):
        from_dict(RunConfig, {"sampler": {"temprature": 0.5}})


def test_toml_file_then_overrides_then_types(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('lr = 3e-4\nname = "chord"\nseeds = [1, 2]\n\n'
                    "[model]\nn_layers = 2\ndim = 64\nqkv_bias = false\n\n[sampler]\ntemperature = 0.7\n")
    cfg = load_config(RunConfig, path)
    assert cfg.lr == 3e-4 and cfg.name == "chord" and cfg.seeds == [1, 2]
    assert (cfg.model.n_layers, cfg.model.dim, cfg.model.qkv_bias) == (2, 64, False)
    assert cfg.model.n_heads == 4  # untouched fields keep their defaults
    assert cfg.sampler.temperature == 0.7

    cfg = load_config(RunConfig, path, ["lr=1e-2", "model.n_layers=3", "model.qkv_bias=yes",
                                         "seeds=4,5,6", "steps=1e3", "budget=7", "sampler.greedy=true"])
    assert cfg.lr == 1e-2 and isinstance(cfg.lr, float)
    assert cfg.model.n_layers == 3 and cfg.model.dim == 64  # override beats file, file beats default
    assert cfg.model.qkv_bias is True and cfg.sampler.greedy is True
    assert cfg.seeds == [4, 5, 6] and cfg.steps == 1000 and isinstance(cfg.steps, int)
    assert cfg.budget == 7
    assert load_config(RunConfig, path, ["budget=none"]).budget is None


def test_base_dict_is_overridden_by_file_and_by_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[model]\ndim = 64\n")
    base = {"lr": 5e-5, "model": {"dim": 32, "n_layers": 1}}
    cfg = load_config(RunConfig, path, ["lr=0.1"], base=base)
    assert cfg.lr == 0.1
    assert (cfg.model.dim, cfg.model.n_layers) == (64, 1)  # the file's table merges into the base's
    assert base == {"lr": 5e-5, "model": {"dim": 32, "n_layers": 1}}  # the base is not mutated


@pytest.mark.parametrize("override, message", [
    ("model.n_layers=2.5", "model.n_layers: cannot read '2.5' as int"),
    ("model.n_layers=two", "cannot read 'two' as int"),
    ("model.qkv_bias=maybe", "cannot read 'maybe' as bool"),
    ("lr=fast", "lr: cannot read 'fast' as float"),
    ("seeds=1,x", "cannot read 'x' as int"),
    ("budget=1.5", "budget: cannot read '1.5' as int"),
])
def test_bad_override_values_name_key_and_value(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RunConfig, overrides=[override])


def test_bad_toml_values_and_shapes(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("steps = true\n")
    with pytest.raises(ConfigError, match="cannot read True as int"):
        load_config(RunConfig, path)
    path.write_text("model = 3\n")
    with pytest.raises(ConfigError, match="expected a table"):
        load_config(RunConfig, path)
    with pytest.raises(ConfigError, match="not of the form key=value"):
        apply_overrides({}, ["lr"])


def test_missing_and_invalid_toml_files_are_named(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="not found") as err:
        load_config(RunConfig, missing)
    assert str(missing) in str(err.value)
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = = 3\n")
    with pytest.raises(ConfigError, match="invalid TOML") as err:
        load_config(RunConfig, bad)
    assert str(bad) in str(err.value)


def test_validation_in_post_init():
    with pytest.raises(ConfigError, match="dim=100 is not divisible by n_heads=3"):
        ModelConfig(dim=100, n_heads=3, n_kv_heads=1)
    with pytest.raises(ConfigError, match="n_heads=4 is not divisible by n_kv_heads=3"):
        load_config(ModelConfig, overrides=["n_kv_heads=3"])
    with pytest.raises(ConfigError, match="temperature"):
        SamplerConfig(temperature=0.0)
    assert SamplerConfig(temperature=0.0, greedy=True).greedy


def test_to_dict_from_dict_round_trip():
    cfg = RunConfig(model=ModelConfig(dim=64, n_layers=2), lr=0.5, seeds=[3, 4], budget=9)
    data = to_dict(cfg)
    assert data["model"]["dim"] == 64 and "limit" not in data  # None dropped (TOML has no null)
    assert from_dict(RunConfig, data) == cfg
    assert ModelConfig(dim=64).head_dim == 16


# ---- regressions: PEP 604 optionals and overflowing numbers ------

def test_pep604_optional_is_converted():
    cfg = load_config(RunConfig, overrides=["limit=3"])
    assert cfg.limit == 3
    with pytest.raises(ConfigError):
        load_config(RunConfig, overrides=["limit=abc"])


def test_infinite_int_is_a_config_error():
    with pytest.raises(ConfigError, match="steps"):
        load_config(RunConfig, overrides=["steps=inf"])


# ---- every field validated where the config is built (one line: key, value, what is allowed) ------

@pytest.mark.parametrize("override, message", [
    ("steps=0", "steps=0: must be an integer >= 1"),
    ("lr=0", "lr=0.0: must be a finite number > 0"),
    ("lr=nan", "lr=nan: must be a finite number > 0"),
    ("grad_clip=-1", "grad_clip=-1.0: must be a finite number > 0"),
    ("weight_decay=-0.1", "weight_decay=-0.1: must be a finite number >= 0"),
    ("mu_peak=1.5", "mu_peak=1.5: must be a finite number in [0, 1]"),
    ("loss.eps_low=1", "eps_low=1.0: must be a finite number in [0, 1)"),
    ("loss.dual_clip=1", "dual_clip=1.0: must be a finite number > 1"),
    ("group_size=1", "group_size=1: must be an integer >= 2"),
    ("n_expert=-1", "n_expert=-1: must be an integer >= 0"),
    ("minibatches=99999999999", "minibatches=99999999999: must be an integer in [1, 4294967295]"),
    ("sampler.top_k=-1", "top_k=-1: must be an integer >= 0"),
    ("sampler.temperature=inf", "temperature=inf: must be a finite number > 0"),
])
def test_train_config_values_are_validated(override, message):
    from minichord.config import TrainConfig

    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, overrides=[override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_types_are_strict_and_every_model_size_checked():
    from minichord.config import TrainConfig

    with pytest.raises(ConfigError, match="steps=True: must be an integer >= 1"):
        TrainConfig(steps=True)
    with pytest.raises(ConfigError, match="qkv_bias=1: must be true or false"):
        ModelConfig(qkv_bias=1)
    with pytest.raises(ConfigError, match="n_heads=0: must be an integer >= 1"):
        ModelConfig(n_heads=0)  # refused before the divisibility check divides by it
    with pytest.raises(ConfigError, match="rope_theta=nan"):
        ModelConfig(rope_theta=float("nan"))
    with pytest.raises(ConfigError, match="mu_warmup_frac \\+ mu_decay_frac = 1.5"):
        load_config(TrainConfig, overrides=["mu_warmup_frac=0.5", "mu_decay_frac=1"])
    with pytest.raises(ConfigError, match="init: cannot read 3 as str"):
        from_dict(TrainConfig, {"init": 3})
    assert load_config(TrainConfig, overrides=["steps=4294967295", "loss.dual_clip=none"]).steps == 4294967295  # exact, no float


def test_unreadable_config_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(RunConfig, tmp_path)  # a directory
    (tmp_path / "deep.toml").write_text("x = " + "[" * 5000 + "]" * 5000)
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(RunConfig, tmp_path / "deep.toml")


def test_the_loss_table_is_one_place_for_every_token_loss_setting(tmp_path):
    """--set loss.X and a TOML [loss] table reach the same LossConfig; a convention's preset sits under the user's
    settings and over the defaults; a bad key, value or combination is one line naming the table."""
    from minichord.methods import build_stages

    (cfg,) = [s.cfg for s in build_stages("chord-phi", overrides=["loss.eps_high=0.28", "convention=official"])]
    assert (cfg.loss.eps_high, cfg.loss.expert_weighting, cfg.loss.dual_clip, cfg.loss.aggregation) == \
        (0.28, "phi", 3.0, "micro-batch")
    (tmp_path / "run.toml").write_text('convention = "official"\n[loss]\ndual_clip = 5.0\n')
    assert build_stages("grpo", str(tmp_path / "run.toml"))[0].cfg.loss.dual_clip == 5.0  # the file wins
    luffy = build_stages("luffy", overrides=["convention=official"])[0].cfg.loss
    assert (luffy.aggregation, luffy.std, luffy.expert_in_group) == ("joint", "none", True)  # the method wins
    refusals = [("loss.eps_hgh=0.3", "TrainConfig.loss: unknown key 'eps_hgh'; did you mean 'eps_high'?"),
                ("loss.aggregation=mean", "TrainConfig.loss: aggregation='mean': must be one of token-mean,"),
                ("loss.expert_in_group=true", "TrainConfig.loss: expert_in_group=True with expert_weighting")]
    for override, message in refusals:
        with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace("?", r"\?")) as e:
            build_stages("chord-phi", overrides=[override])
        assert "\n" not in str(e.value)
