"""The config schema: defaults from one place, unknown keys and bad values named in one line with the fix."""
import pytest
import yaml

from cloudvox.config import ConfigError, apply_overrides, load_run_config, validate_featurize
from cloudvox.descriptors import ReciprocalVoxelizer
from cloudvox.models.atomcloud import AtomCloudNet
from cloudvox.training.config import TrainConfig
from tests.conftest import ROOT


def test_defaults_come_from_the_signatures_and_dataclasses():
    cfg = load_run_config(None, [], model="atomcloud")
    assert cfg.network["cutoff"] == 3.0 and cfg.network["l_max"] == 2  # AtomCloudNet.__init__
    assert cfg.train == TrainConfig()  # every default from the one dataclass
    assert cfg.to_dict()["data"]["split"] == dict(by=None, fractions=[0.8, 0.1, 0.1], sizes=None, seed=0, hold_out=None)
    vox = load_run_config(None, [], model="voxelnet").network
    assert vox["widths"] == [16, 16, 16] and "in_channels" not in vox and "channel_names" not in vox
    feat = validate_featurize(dict(format="aflow", output="x.h5"))
    assert feat["descriptor"]["sigma"] == ReciprocalVoxelizer().sigma and feat["block_size"] == 256
    assert yaml.safe_load(yaml.safe_dump(vox)) == vox  # lists, not tuples: written back to config.yaml


@pytest.mark.parametrize("sets, message", [
    (["train.lrr=1e-3"], "unknown key 'train.lrr': did you mean 'lr'?"),
    (["netwrk.widths=[4]"], "unknown key 'netwrk': did you mean 'network'?"),
    (["network.widht=[4]"], "unknown key 'network.widht': did you mean 'widths'?"),
    (["data.split.bye=compound"], "unknown key 'data.split.bye': did you mean 'by'?"),
    (["train.lr=fast"], "train.lr: expected a float like 0.001, got 'fast'"),
    (["train.epochs=2.5"], "train.epochs: expected a int like 50, got 2.5"),
    (["data.normalize=zscore"], "data.normalize: 'zscore' is not one of 'mean_std', 'composition', 'none'"),
    (["train.optimizer=sgd"], "train.optimizer: 'sgd' is not one of 'adam', 'adamw'"),
    (["augment.rotations=3"], "augment.rotations: expected a bool like True, got 3"),
    (["train.lr"], "--set expects KEY=VALUE"),
])
def test_bad_keys_and_values_are_named_with_the_fix(sets, message):
    with pytest.raises(ConfigError) as e:
        load_run_config(ROOT / "jobs" / "configs" / "voxelnet_cross.yaml", sets)
    assert str(e.value) == message or str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_models_are_checked_against_the_registry():
    with pytest.raises(ConfigError, match="unknown model 'voxnet': did you mean 'voxelnet'"):
        load_run_config(None, [], model="voxnet")
    with pytest.raises(ConfigError, match="unknown key 'network.widths'"):  # a VoxelNet key for AtomCloudNet
        load_run_config(None, ["network.widths=[4]"], model="atomcloud")
    assert set(load_run_config(None, [], model="atomcloud").network) <= set(
        AtomCloudNet.__init__.__code__.co_varnames)


def test_yaml_files_errors_and_numbers(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_run_config(bad)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_run_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(tmp_path / "absent.yaml")
    assert load_run_config(None, ["train.lr=1e-3"]).train.lr == 1e-3  # YAML 1.1 reads 1e-3 as a string
    with pytest.raises(ConfigError, match="unknown key 'descriptor.sigm': did you mean 'sigma'"):
        validate_featurize(dict(descriptor=dict(sigm=0.2)))
    with pytest.raises(ConfigError, match="descriptor.mode: 'polar' is not one of 'cartesian', 'spherical'"):
        validate_featurize(dict(descriptor=dict(mode="polar")))
    assert apply_overrides({}, ["a.b=[1, 2]"]) == {"a": {"b": [1, 2]}}


def test_every_shipped_config_validates():
    configs = sorted((ROOT / "jobs" / "configs").glob("*.yaml"))
    assert len(configs) >= 10
    for path in configs:
        raw = yaml.safe_load(path.read_text())
        if "model" in raw:
            load_run_config(path)
        else:
            validate_featurize(raw)


def test_a_loaded_run_config_is_typed_and_round_trips_through_its_yaml(tmp_path):
    import yaml
    from cloudvox.config import RunConfig
    cfg = load_run_config(None, ["train.lr=3e-4", "train.loss=berhu", "data.split.seed=3", "augment.reflections=false"],
                          model="voxelnet")
    assert isinstance(cfg, RunConfig) and cfg.train.lr == 3e-4 and cfg.train.loss == "berhu"
    assert cfg.data.split.seed == 3 and cfg.augment.reflections is False
    with pytest.raises(AttributeError):
        cfg.train.learning_rate  # a misspelt key in code fails loudly, where a dict's .get() returned None
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_run_config(path) == cfg and RunConfig.of(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="train.loss: 'l3' is not one of 'l1', 'mse', 'huber', 'berhu'"):
        load_run_config(None, ["train.loss=l3"])  # the choices live beside the default, in TrainConfig
