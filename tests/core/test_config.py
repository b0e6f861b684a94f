import pytest

from generalist_trainer.trainer.config import (
    RunConfig,
    Schedule,
    apply_overrides,
    config_from_dict,
    load_config,
    save_config,
    to_dict,
)
from generalist_trainer.trainer.errors import ConfigError


def test_defaults_validate_and_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, [])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_dotted_overrides_parse_yaml_scalars():
    cfg = load_config(None, ["train.epochs=3", "attack.eps=0.1", "data.flip=false", "data.train_subset=null",
                             "eval.attacks=[clean, pgd]"])
    assert cfg.train.epochs == 3 and cfg.attack.eps == 0.1 and cfg.data.flip is False
    assert cfg.eval.attacks == ("clean", "pgd")


@pytest.mark.parametrize("override, field", [
    ("attack.eps=-0.1", "attack.eps"),
    ("method.name=fgsm", "method.name"),
    ("model.arch=vgg", "model.arch"),
    ("data.batch_size=0", "data.batch_size"),
    ("train.epochs=two", "train.epochs"),
    ("method.generalist.sync_mode=sometimes", "method.generalist.sync_mode"),
    ("data.datset=mnist", "data.datset"),
])
def test_invalid_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="section.field=value"):
        apply_overrides({}, ["train.epochs"])


def test_schedule_is_piecewise_linear_in_epochs():
    s = Schedule(knots=(0.0, 0.5, 1.0), values=(1.0, 1.0, 0.0))
    assert [s.at(e, 10) for e in (1, 5, 6, 10)] == [1.0, 1.0, pytest.approx(0.8), 0.0]


def test_config_dict_round_trip():
    cfg = RunConfig()
    assert config_from_dict(to_dict(cfg)) == cfg


def test_every_preset_loads():
    import glob
    files = sorted(glob.glob("configs/*.yaml"))
    assert files
    for f in files:
        load_config(f)


def test_a_number_is_a_constant_schedule_and_exponent_strings_are_numbers():
    cfg = load_config(None, ["optim.lr=0.1", "method.generalist.beta=1.0", "optim.weight_decay=5e-4",
                             "attack.eps=1E-1"])
    assert cfg.optim.lr.knots == (0.0,) and cfg.optim.lr.values == (0.1,)
    assert [cfg.optim.lr.at(e, 8) for e in (1, 4, 8)] == [0.1, 0.1, 0.1]
    assert cfg.method.generalist.beta.at(8, 8) == 1.0
    assert cfg.optim.weight_decay == 5e-4 and isinstance(cfg.optim.weight_decay, float) and cfg.attack.eps == 0.1
    for bad, field in (("optim.lr=fast", "optim.lr"), ("optim.weight_decay=nan", "optim.weight_decay"),
                       ("attack.eps=1e", "attack.eps")):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            load_config(None, [bad])
