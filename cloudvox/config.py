"""The config schema of every job, with its defaults in one place, and its validation.

Two documents, read from YAML with ``yaml.safe_load`` and completed with their defaults:

* a featurize config (``cloudvox featurize --config``): :data:`FEATURIZE`, whose ``descriptor`` section
  takes the keyword arguments of :class:`cloudvox.descriptors.ReciprocalVoxelizer` (defaults: its signature);
* a run config (``cloudvox train MODEL CONFIG``): :data:`RUN`; ``network`` takes the keyword arguments of the
  model's constructor (defaults: its signature, via :mod:`cloudvox.models`); ``train`` is
  :class:`cloudvox.training.config.TrainConfig`. A loaded run config is typed (:class:`RunConfig`).

A section is a dataclass: its fields are the valid keys, their defaults the defaults, ``metadata["choices"]``
the allowed values. An unknown key, a value of the wrong type or outside its choices raises
:class:`ConfigError`, one line naming the key, the problem and the nearest valid key. ``--set a.b=value``
overrides are parsed as YAML scalars and validated the same way.
"""
import copy
import dataclasses
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import yaml

from .errors import ConfigError, nearest
from .training.config import TrainConfig, choices as _choices


# --------------------------------------------------------------------------------------------------------
# featurize
# --------------------------------------------------------------------------------------------------------
@dataclass
class FeaturizeConfig:
    """A featurize job: input, output, what to store and how to cut the work."""
    input: List[str] = field(default_factory=list)  # files or folders; empty: the embedded qm9 / prototypes
    format: Optional[str] = _choices("aflow", "files", "ase", "qm9", "prototypes", None, default=None)
    output: Optional[str] = None  # the .h5 file (its folder is created)
    descriptor: Dict[str, Any] = field(default_factory=dict)  # ReciprocalVoxelizer keyword arguments
    store: List[str] = field(default_factory=lambda: list(_store_items(default=True)))  # what the file holds
    block_size: int = 256  # records per work block and shard
    limit: Optional[int] = None  # only the first N records
    overwrite: bool = False
    strict: bool = False  # exit 1 if any record is bad
    shard_compression: str = _choices("none", "lzf", default="none")  # the shards in OUT.h5.parts/ until the merge:
    # none writes 4x faster, lzf takes ~0.6x the disk (the output is compressed either way)
    merge_buffer_mb: float = 64.0  # per rank: shards held in memory at once by the merge (uncompressed MB)
    merge_writers: int = 0  # ranks that write the output: 0 one per node (more than one: OUT.h5 is virtual
    # datasets over OUT.h5.segments/, see docs/hdf5_layout.md); N: N writers
    collective_timeout: float = 600.0  # s: with several ranks, a rank that neither finishes a block nor reaches
    # a collective within it ends the job (exit 124), named with its host in one log line; 0: off
    progress_every: float = 60.0  # s between progress lines when the log is not a terminal (0: none)


def _store_items(default: bool = False):
    from .featurefile import STORE_DEFAULT, STORE_ITEMS  # the feature file's layout defines them
    return STORE_DEFAULT if default else STORE_ITEMS


def descriptor_defaults() -> Dict[str, Any]:
    """The descriptor section's keys and defaults: ReciprocalVoxelizer's signature."""
    from .descriptors import ReciprocalVoxelizer
    return _signature_defaults(ReciprocalVoxelizer.__init__)


DESCRIPTOR_CHOICES = {"mode": ("cartesian", "spherical"), "channels": ("element", "total", "properties")}


# --------------------------------------------------------------------------------------------------------
# training runs
# --------------------------------------------------------------------------------------------------------
@dataclass
class SplitConfig:
    by: Optional[str] = None  # group by this metadata field (e.g. compound) so groups never straddle splits
    fractions: List[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    sizes: Optional[List[int]] = None  # absolute train/val/test sizes instead of fractions
    seed: int = 0
    hold_out: Optional[List[str]] = None  # elements: every structure holding one forms a fourth split, "holdout",
    # never trained on, evaluated with the others (a leave-chemistry-out test of accuracy and uncertainty)


@dataclass
class DataConfig:
    path: Optional[str] = None  # the featurized .h5 file
    target: str = "enthalpy_atom"  # a property name of the file (cloudvox info lists them)
    split: SplitConfig = field(default_factory=SplitConfig)
    normalize: str = _choices("mean_std", "composition", "none", default="mean_std")
    species: Optional[List[str]] = None  # element channels of the model (default: the file's)
    extensive: bool = False  # the composition baseline counts atoms (total energies) instead of fractions
    scale: float = 1.0  # target unit factor, e.g. 23.0605 for eV -> kcal/mol
    unit: Optional[str] = None  # the target's unit after scale (default: the file's)


@dataclass
class AugmentConfig:
    rotations: bool = True  # VoxelNet: random rotations of each reciprocal set, binned on the device
    reflections: bool = True


@dataclass
class RunConfig:
    """A training run, typed: ``cfg.train.lr``, ``cfg.data.split.seed``; a misspelt attribute fails loudly."""
    model: str = "voxelnet"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    network: Dict[str, Any] = field(default_factory=dict)  # the model constructor's keyword arguments (its own)
    train: TrainConfig = field(default_factory=TrainConfig)
    run_dir: str = "runs/run"

    def to_dict(self) -> Dict[str, Any]:
        """The plain form: what ``config.yaml`` holds and what loads back to the same config."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def of(cls, cfg: Union["RunConfig", Dict[str, Any]]) -> "RunConfig":
        """A loaded config as it is; a plain dict (a config file's contents) validated."""
        return cfg if isinstance(cfg, cls) else validate_run(dict(cfg))


# --------------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------------
def _signature_defaults(fn: Callable, skip: Sequence[str] = ("self",)) -> Dict[str, Any]:
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if name not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _check_value(where: str, value: Any, default: Any, choices: Optional[Sequence] = None) -> Any:
    if choices is not None and value not in choices:
        shown = ", ".join(repr(c) for c in choices if c is not None)
        raise ConfigError(f"{where}: {value!r} is not one of {shown}")
    if value is None or default is None or default is inspect.Parameter.empty:
        return _plain(value)
    if isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string
            value = float(value) if isinstance(default, float) else int(value)
        except ValueError:
            pass
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    else:
        ok = True
    if not ok:
        kind = "list" if isinstance(default, (list, tuple)) else type(default).__name__
        raise ConfigError(f"{where}: expected a {kind} like {_plain(default)!r}, got {value!r}")
    return _plain(value)


def _plain(v: Any) -> Any:
    """Tuples (signature defaults) as lists, recursively: what YAML and JSON write back."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def check_keys(where: str, values: Any, defaults: Dict[str, Any],
               choices: Optional[Dict[str, Sequence]] = None) -> Dict[str, Any]:
    """A flat section against its keys and defaults: unknown keys and bad values raise; returns the values
    completed with the defaults."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {values!r}")
    out = {k: _plain(v) for k, v in defaults.items()}
    for k, v in values.items():
        name = f"{where}.{k}" if where else str(k)
        if k not in defaults:
            raise ConfigError(f"unknown key {name!r}: {nearest(str(k), list(defaults))}")
        out[k] = _check_value(name, v, defaults[k], (choices or {}).get(k))
    return out


def validate(schema, values: Any, where: str = "") -> Dict[str, Any]:
    """A (nested) dataclass section: returns a plain dict of every key, defaults filled in."""
    fields_ = {f.name: f for f in dataclasses.fields(schema)}
    defaults = {}
    for f in fields_.values():
        defaults[f.name] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    choices = {name: f.metadata["choices"] for name, f in fields_.items() if "choices" in f.metadata}
    flat = check_keys(where, values, {k: (None if dataclasses.is_dataclass(v) else v) for k, v in defaults.items()},
                      choices)
    for name, default in defaults.items():
        if dataclasses.is_dataclass(default):
            flat[name] = validate(type(default), (values or {}).get(name), f"{where}.{name}" if where else name)
    return flat


# --------------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------------
def read_yaml(path: Union[str, Path, None]) -> Dict[str, Any]:
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must be a YAML mapping of keys, got {type(raw).__name__}")
    return raw


def apply_overrides(cfg: Dict, sets: Sequence[str]) -> Dict:
    """``key.sub=value`` overrides; values are parsed as YAML scalars/lists (``train.lr=3e-4``)."""
    cfg = copy.deepcopy(cfg)
    for item in sets or []:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.lr=3e-4), got {item!r}")
        key, value = item.split("=", 1)
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p!r} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError:
            node[parts[-1]] = value
    return cfg


def validate_run(raw: Dict[str, Any]) -> RunConfig:
    """A run config completed with every default, typed; the model's network keys checked against its
    constructor."""
    from .models.registry import get_model
    flat = validate(RunConfig, raw)
    flat["network"] = check_keys("network", raw.get("network"), get_model(flat["model"]).network_defaults())
    return typed(RunConfig, flat)


def typed(schema, values: Dict[str, Any]):
    """The dataclass ``schema`` holding validated ``values`` (nested sections as their dataclasses)."""
    out = {}
    for f in dataclasses.fields(schema):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        out[f.name] = typed(type(default), values[f.name]) if dataclasses.is_dataclass(default) else values[f.name]
    return schema(**out)


def load_run_config(path: Union[str, Path, None], sets: Sequence[str] = (), model: Optional[str] = None) -> RunConfig:
    """Read, override (``--set``), choose the model (the command line's wins) and validate a run config."""
    if model is not None:
        from .models.registry import get_model
        get_model(model)  # a misspelt model name is named before anything else
    raw = apply_overrides(read_yaml(path), sets)
    if model is not None:
        raw["model"] = model
    return validate_run(raw)


def validate_featurize(raw: Dict[str, Any]) -> Dict[str, Any]:
    raw = dict(raw)
    if isinstance(raw.get("input"), str):
        raw["input"] = [raw["input"]]
    cfg = validate(FeaturizeConfig, raw)
    cfg["descriptor"] = check_keys("descriptor", raw.get("descriptor"), descriptor_defaults(), DESCRIPTOR_CHOICES)
    unknown = set(cfg["store"]) - set(_store_items())
    if unknown:
        raise ConfigError(f"store: unknown item(s) {sorted(unknown)}; choose from {', '.join(_store_items())}")
    if not isinstance(cfg["merge_writers"], int) or cfg["merge_writers"] < 0:
        raise ConfigError(f"merge_writers: {cfg['merge_writers']!r}; use 0 (one writer per node) or a number of writers")
    return cfg


def describe(schema, where: str = "") -> List[str]:
    """One line per key of a config section (nested sections expanded): ``key = default  (choices)``: the
    reference that ``cloudvox train --help`` prints, generated from the schema itself."""
    lines = []
    for f in dataclasses.fields(schema):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        name = f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(default):
            lines += describe(type(default), name)
            continue
        shown = "{the model's constructor}" if name == "network" else repr(_plain(default))
        choice = f.metadata.get("choices")
        lines.append(f"  {name} = {shown}" + (f"  ({' | '.join(str(c) for c in choice)})" if choice else ""))
    return lines
