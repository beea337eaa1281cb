"""One experiment: train (AdamW + linear decay, dev loss for model selection and early stopping),
then generate with the best parameters and score. ``train(cfg)`` is a plain function so tests
call it without Hydra; ``prefixtune/cli.py`` is the thin Hydra wrapper.

``train()`` reads as its phases: claim the run folder, restore a checkpoint, load the data,
build the model, prepare the optimizer, fit, evaluate, write the run info. The phases share a
`Run` (config, folder, processes) and a `Loop` (the training objects and the `TrainState` that
a checkpoint stores, checkpoint.py).

The same code runs on CPU, one GPU, or several processes (``accelerate launch`` / ``torchrun``):
each process takes its slice of every global batch and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import broadcast, broadcast_object_list, gather_object
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from prefixtune import checkpoint as ckpt
from prefixtune import runfolder as rf
from prefixtune import runinfo
from prefixtune.checkpoint import TrainState
from prefixtune.collate import Collator, Encoded
from prefixtune.config import Arch, EvalSplit, MethodName, Precision, to_container, validate
from prefixtune.errors import UsageError
from prefixtune.generate import generate_outputs, merge_outputs
from prefixtune.loggers import Logger, NullLogger, make_logger
from prefixtune.metrics import score_examples
from prefixtune.metrics.stats import write_stats
from prefixtune.models import (
    apply_method,
    enable_gradient_checkpointing,
    load_model,
    parameter_counts,
)

log = logging.getLogger(__name__)


_MIXED = {Precision.fp32: "no", Precision.bf16: "bf16", Precision.fp16: "fp16"}


class TrainingDiverged(UsageError):
    """The loss became NaN/inf: training stops, the last good checkpoint is kept."""


def train(
    cfg: DictConfig, overrides: list[str] | None = None, unique_dir: bool = False
) -> dict[str, Any]:
    """Run one experiment into ``cfg.output_dir``; returns the metrics written to metrics.json.

    ``unique_dir``: the folder is a default name (Hydra's timestamp), so when another run took
    it a moment ago this run moves on to ``<folder>-2``; otherwise a taken folder is an error.
    """
    start = time.time()
    overrides = list(overrides or [])
    validate(cfg, overrides)
    # AcceleratorState is a per-process singleton that refuses a second mixed_precision; runs
    # of a sweep (Hydra's basic launcher) share a process, so each run states its own afresh
    # (PartialState, the processes, stays).
    AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=cfg.cpu, mixed_precision=_MIXED[Precision(cfg.train.precision)])
    if Precision(cfg.train.precision) is Precision.fp16 and accelerator.scaler is None:
        raise UsageError(
            f"train.precision=fp16 needs loss scaling, which accelerate gives on a GPU only (this "
            f"run is on {accelerator.device.type}); use train.precision=bf16"
        )
    claim = _agree_on_run_dir(accelerator, cfg, overrides, unique_dir)
    if claim.finished:
        log.warning("resume=true: the run in %s already finished; nothing to do", claim.path)
        metrics = json.loads((claim.path / rf.METRICS).read_text())
        return {**metrics, "output_dir": str(claim.path)}
    if claim.path != Path(str(cfg.output_dir)):
        log.info("%s the run in %s", "resuming" if claim.resumed else "writing", claim.path)
    try:
        run = Run(cfg, overrides, accelerator, claim.path, start)
        saved = restore(run)  # before the slow steps: a bad checkpoint fails at once
        data = run.timed("load_data", load_data, cfg)
        built = run.timed("build_model", build_model, cfg, data)
        loop = run.timed("prepare", prepare, run, built, saved)
        write_run_start(run)
        logger = make_logger(cfg, run.out, run.resumed_from_step) if run.main else None
        with contextlib.closing(logger or NullLogger()) as logger:
            run.timed("fit", fit, run, loop, logger)
            metrics = run.timed("evaluate", evaluate, run, loop, data)
            if run.main:
                write_run_info(run, loop, metrics)
                logger.summary(metrics)
        return {**metrics, "output_dir": str(run.out)}
    except BaseException:
        claim.release(failed=True)
        raise
    finally:
        claim.release()


@dataclass
class Run:
    """What every phase needs to know about this run: its config, folder and processes."""

    cfg: DictConfig
    overrides: list[str]
    accelerator: Accelerator
    out: Path
    start: float
    resolved: dict[str, Any] = field(init=False)
    earlier_s: float = 0.0  # wall time of the earlier segments of a resumed run
    resumed_from_step: int | None = None
    phases_s: dict[str, float] = field(default_factory=dict)  # wall time of each phase

    def __post_init__(self) -> None:
        self.resolved = to_container(self.cfg)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def timed(self, phase: str, fn, *args):
        t0 = time.time()
        try:
            return fn(*args)
        finally:
            self.phases_s[phase] = time.time() - t0


@dataclass
class Data:
    task: str
    root: str
    train_pairs: list[tuple[str, str]]
    dev_pairs: list[tuple[str, str]]
    eval_sets: list[tuple[str, list]]  # (split, examples) to generate for and score


@dataclass
class Built:
    base: torch.nn.Module
    model: torch.nn.Module  # what is trained: a PrefixModel, or the base itself
    collator: Collator
    counts: dict[str, Any]
    train_items: list[Encoded]
    dev_items: list[Encoded]


@dataclass
class Loop:
    """The training loop's objects and its TrainState (what a checkpoint stores)."""

    model: torch.nn.Module  # as accelerate prepared it
    raw: torch.nn.Module  # unwrapped: for saving, loading and generating
    collator: Collator
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_items: list[Encoded]
    dev_items: list[Encoded]
    counts: dict[str, Any]
    total_steps: int
    step_batch: int  # examples per optimizer step: batch_size x grad_accum x processes
    steps_per_epoch: int
    eval_every: int
    ckpt_every: int
    state: TrainState
    saved_step: int | None  # the step of the checkpoint on disk, if any
    stopped_by: str = "steps"  # what ended training: steps | patience | max_minutes


def restore(run: Run) -> TrainState | None:
    """Tidy the folder and read its checkpoint, refusing one written with another config."""
    if run.main:
        for tmp in rf.remove_stale_temp_files(run.out):
            log.info("removed %s, left by an interrupted write", tmp)
    saved = ckpt.load_state(run.out)
    if saved is not None:
        _check_same_config(saved.config, run.resolved)
        run.earlier_s, run.resumed_from_step = saved.elapsed_s, saved.step
    return saved


def load_data(cfg: DictConfig) -> Data:
    """The training and dev pairs and the eval sets (low-data splits and subsets applied)."""
    from prefixtune.data import default_data_root, load_split, low_data_split, training_pairs

    root = cfg.data.root or default_data_root()
    task = str(cfg.task.name)

    def split(name: str, subset: str = cfg.task.subset) -> list:
        return load_split(task, name, root, subset=subset, allow_modified=cfg.data.allow_modified)

    if cfg.train.low_data > 0:
        train_ex, dev_ex = low_data_split(
            split("train"), cfg.train.low_data, cfg.train.low_data_seed
        )
    else:
        train_ex, dev_ex = split("train"), split("dev")
    train_pairs = training_pairs(train_ex)
    if 0 < cfg.train.max_train_examples < len(train_pairs):
        keep = sorted(
            random.Random(cfg.seed).sample(range(len(train_pairs)), cfg.train.max_train_examples)
        )
        train_pairs = [train_pairs[i] for i in keep]
    if not train_pairs:
        raise UsageError(f"task={task} has no training examples under {root}")
    eval_sets = []
    for name in _EVAL_SPLITS[EvalSplit(cfg.eval.split)]:
        # extrapolation trains on seen categories and tests on all of them
        examples = (
            dev_ex if name == "dev" else split("test", cfg.task.eval_subset or cfg.task.subset)
        )
        if cfg.eval.max_examples > 0:
            examples = examples[: cfg.eval.max_examples]
        eval_sets.append((name, examples))
    dev_pairs = training_pairs(dev_ex)[: cfg.train.max_dev_examples]
    return Data(task, root, train_pairs, dev_pairs, eval_sets)


_EVAL_SPLITS = {
    EvalSplit.dev: ["dev"],
    EvalSplit.test: ["test"],
    EvalSplit.both: ["dev", "test"],
    EvalSplit.none: [],
}


def build_model(cfg: DictConfig, data: Data) -> Built:
    """The frozen base with the method applied, the collator, and the encoded pairs."""
    torch.manual_seed(cfg.seed)
    base, tokenizer = load_model(cfg.model, data.root)
    encoder_decoder = Arch(cfg.model.arch) is Arch.encoder_decoder
    model = apply_method(base, cfg, tokenizer)
    if cfg.train.gradient_checkpointing:
        enable_gradient_checkpointing(base)
    collator = Collator(
        tokenizer,
        encoder_decoder=encoder_decoder,
        max_source_tokens=cfg.task.max_source_tokens,
        max_target_tokens=cfg.task.max_target_tokens,
        decoder_start_token_id=getattr(base.config, "decoder_start_token_id", None),
    )
    train_items = [collator.encode(x, y) for x, y in data.train_pairs]
    dev_items = [collator.encode(x, y) for x, y in data.dev_pairs]
    prompts = [len(collator.encode_source(e.source)) for _, ex in data.eval_sets for e in ex]
    sources = [len(it.source) for it in train_items + dev_items] if encoder_decoder else []
    lengths = [len(it.target) + (0 if encoder_decoder else len(it.source)) for it in train_items]
    _check_positions(base, cfg, max(prompts + sources, default=0), max(lengths))
    counts = parameter_counts(model, base)
    return Built(base, model, collator, counts, train_items, dev_items)


def prepare(run: Run, built: Built, saved: TrainState | None) -> Loop:
    """Optimizer, schedule and the state to start from (a fresh one, or the checkpoint's)."""
    cfg, accelerator = run.cfg, run.accelerator
    params = [p for p in built.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    step_batch = cfg.train.batch_size * cfg.train.grad_accum * accelerator.num_processes
    steps_per_epoch = max(1, len(built.train_items) // step_batch)
    total_steps = (
        cfg.train.max_steps if cfg.train.max_steps > 0 else cfg.train.epochs * steps_per_epoch
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.train.warmup_steps, total_steps)
    model, optimizer = accelerator.prepare(built.model, optimizer)
    raw = accelerator.unwrap_model(model)
    if cfg.train.compile:  # the training and dev-loss forwards; generation runs `raw`
        model = torch.compile(model, dynamic=True)
    eval_every = cfg.train.eval_every if cfg.train.eval_every > 0 else steps_per_epoch
    state = saved or TrainState(config=run.resolved)
    if saved is not None:
        ckpt.load_trainable(raw, saved.trainable)
        optimizer.load_state_dict(saved.optimizer)
        scheduler.load_state_dict(saved.scheduler)
        ckpt.set_rng_state(saved.rng[accelerator.process_index])
        saved.trainable = saved.optimizer = {}  # in the model and optimizer now: no copies
        log.info("resumed from step %d of %d", saved.step, total_steps)
    return Loop(
        model=model,
        raw=raw,
        collator=built.collator,
        params=params,
        optimizer=optimizer,
        scheduler=scheduler,
        train_items=built.train_items,
        dev_items=built.dev_items,
        counts=built.counts,
        total_steps=total_steps,
        step_batch=step_batch,
        steps_per_epoch=steps_per_epoch,
        eval_every=eval_every,
        ckpt_every=cfg.train.checkpoint_every if cfg.train.checkpoint_every > 0 else eval_every,
        state=state,
        saved_step=saved.step if saved else None,
    )


def write_run_start(run: Run) -> None:
    """A fresh run records its config and command before training starts."""
    if not run.main or run.resumed_from_step is not None:
        return
    run.out.mkdir(parents=True, exist_ok=True)
    rf.write_text(run.out / rf.CONFIG, OmegaConf.to_yaml(run.resolved))
    rf.write_json(
        run.out / rf.OVERRIDES,
        {"overrides": run.overrides, "semantic": rf.semantic_overrides(run.overrides)},
    )


def fit(run: Run, loop: Loop, logger: Logger) -> None:
    """AdamW steps with dev-loss evaluations (model selection, early stopping) and checkpoints."""
    cfg, accelerator, state = run.cfg, run.accelerator, loop.state
    bar = tqdm(
        total=loop.total_steps, initial=state.step, desc="train", disable=not run.main, unit="step"
    )
    stop = _over_budget(run, loop)
    while state.step < loop.total_steps and not stop:
        loop.model.train()
        loss = _accumulated_step(run, loop)
        losses = accelerator.gather(loss.detach().reshape(1))
        if not torch.isfinite(losses).all():
            state.step += 1
            raise _diverged(run, loop, f"loss became {loss.item()}")
        if cfg.train.grad_clip > 0:
            accelerator.clip_grad_norm_(loop.params, cfg.train.grad_clip)
        loop.optimizer.step()
        loop.scheduler.step()
        loop.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        bar.update(1)
        lr = loop.scheduler.get_last_lr()[0]
        logger.log({"step": state.step, "split": "train", "loss": losses.mean().item(), "lr": lr})
        improved = False
        out_of_time = _over_budget(run, loop)
        if state.step % loop.eval_every == 0 or state.step == loop.total_steps or out_of_time:
            dev_loss = _dev_loss(run, loop)
            if not math.isfinite(dev_loss) and loop.dev_items:
                logger.log({"step": state.step, "split": "dev", "loss": None, "best": False})
                raise _diverged(run, loop, f"dev loss became {dev_loss}")
            improved = dev_loss < state.best_loss
            if improved:
                state.best_loss, state.best_step, state.bad_evals = dev_loss, state.step, 0
            else:
                state.bad_evals += 1
            logger.log({"step": state.step, "split": "dev", "loss": dev_loss, "best": improved})
            bar.set_postfix(dev_loss=f"{dev_loss:.4f}")
            if 0 < cfg.train.patience <= state.bad_evals:
                loop.stopped_by = "patience"
        stop = out_of_time or loop.stopped_by == "patience"
        if improved or state.step % loop.ckpt_every == 0 or state.step == loop.total_steps or stop:
            _save_state(run, loop, best=improved)
    bar.close()


def _accumulated_step(run: Run, loop: Loop) -> torch.Tensor:
    """Forward and backward over the step's train.grad_accum micro-batches of this process.

    Each micro-batch's mean loss is weighted by its share of the step's target tokens, so the
    gradient equals that of one batch of all of them (the model's loss is a token mean); the
    returned loss is that batch's. Processes sync gradients on the last micro-batch only."""
    cfg, accelerator, state = run.cfg, run.accelerator, loop.state
    size, accum = cfg.train.batch_size, cfg.train.grad_accum
    epoch, pos = divmod(state.step, loop.steps_per_epoch)
    order = _epoch_order(len(loop.train_items), cfg.seed, epoch)
    first = pos * loop.step_batch + accelerator.process_index * size * accum
    batches = []
    for k in range(accum):
        chunk = [order[(first + k * size + j) % len(order)] for j in range(size)]
        batches.append(loop.collator.train_batch([loop.train_items[i] for i in chunk]))
    tokens = [loop.collator.target_tokens(b) for b in batches]
    total = max(1, sum(tokens))
    step_loss = torch.zeros((), device=accelerator.device)
    for k, (batch, n) in enumerate(zip(batches, tokens, strict=True)):
        last = k == accum - 1
        sync = contextlib.nullcontext() if last else accelerator.no_sync(loop.model)
        with sync:
            loss = loop.model(**_to_device(batch, run)).loss * (n / total)
            accelerator.backward(loss)
        step_loss += loss.detach().float()
    return step_loss


def _over_budget(run: Run, loop: Loop) -> bool:
    """train.max_minutes spent (this segment and the earlier ones)? Rank 0's clock decides,
    so that every process stops at the same step."""
    budget = run.cfg.train.max_minutes
    if budget <= 0:
        return False
    over = torch.tensor([run.earlier_s + time.time() - run.start >= budget * 60])
    if run.accelerator.num_processes > 1:
        over = broadcast(over.to(run.accelerator.device), from_process=0).cpu()
    if bool(over):
        loop.stopped_by = "max_minutes"
    return bool(over)


def evaluate(run: Run, loop: Loop, data: Data) -> dict[str, Any]:
    """Save the trained artefact from the best parameters, then generate and score."""
    cfg, accelerator, state = run.cfg, run.accelerator, loop.state
    best = ckpt.best_params(run.out, state)
    if best is not None:
        ckpt.load_trainable(loop.raw, best)
    del best
    if run.main:
        _save_trained(loop.raw, MethodName(cfg.method.name), run.out)
    metrics: dict[str, Any] = {
        "dev_loss": state.best_loss if state.has_best else None,
        "best_step": state.best_step,
        "steps": state.step,
    }
    world = accelerator.num_processes
    for split, examples in data.eval_sets:
        shares = generate_outputs(
            loop.raw,
            loop.collator,
            [e.source for e in examples],
            max_rows=cfg.eval.batch_size,
            num_beams=cfg.eval.num_beams,
            max_new_tokens=cfg.eval.max_new_tokens,
            min_new_tokens=cfg.eval.min_new_tokens,
            length_penalty=cfg.eval.length_penalty,
            rank=accelerator.process_index,
            world_size=world,
            device=accelerator.device,
            desc=f"generate {split}",
            show_progress=run.main,
        )
        all_shares = gather_object([shares]) if world > 1 else [shares]
        if not run.main:
            continue
        hyps = merge_outputs(all_shares, len(examples))
        rf.write_text(run.out / rf.generations(split), "".join(h + "\n" for h in hyps))
        if cfg.eval.score:
            metrics[split], stats = score_examples(data.task, hyps, examples)
            write_stats(run.out / rf.input_stats(split), stats)
            log.info("%s scores: %s", split, metrics[split])
    accelerator.wait_for_everyone()
    return metrics


def write_run_info(run: Run, loop: Loop, metrics: dict[str, Any]) -> None:
    """run.json, then metrics.json: the file whose presence means the run is finished."""
    segment_s = time.time() - run.start
    info = {
        "status": "finished",
        "git": runinfo.git_info(),
        "packages": runinfo.package_versions(),
        "environment": runinfo.environment(),
        "processes": run.accelerator.num_processes,
        "parameters": loop.counts,
        "wall_time_s": run.earlier_s + segment_s,
        "wall_time_this_segment_s": segment_s,
        "phases_this_segment_s": run.phases_s,
        "memory": runinfo.peak_memory_mb(),
        "resumed_from_step": run.resumed_from_step,
        "training": {
            "steps": loop.state.step,
            "planned_steps": loop.total_steps,
            "stopped_by": loop.stopped_by,
            "max_minutes": run.cfg.train.max_minutes or None,
            "step_batch": loop.step_batch,
            "precision": str(run.cfg.train.precision),
            "model_dtype": str(run.cfg.model.dtype),
            "gradient_checkpointing": run.cfg.train.gradient_checkpointing,
        },
    }
    rf.write_json(run.out / rf.RUN_INFO, info)
    rf.write_json(run.out / rf.METRICS, metrics)
    (run.out / rf.BEST).unlink(missing_ok=True)  # the artefact holds them now


def _save_state(run: Run, loop: Loop, best: bool) -> None:
    """A checkpoint of this step (then, at a new best, its parameters as best.safetensors).

    A checkpoint is good only with finite parameters (the losses were checked already)."""
    if not all(bool(torch.isfinite(p).all()) for p in loop.params):
        raise _diverged(run, loop, "the parameters became NaN or inf")
    accelerator, state = run.accelerator, loop.state
    rngs = gather_object([ckpt.rng_state()]) if accelerator.num_processes > 1 else None
    if run.main:
        state.trainable = ckpt.trainable_state(loop.raw)
        state.optimizer = loop.optimizer.state_dict()
        state.scheduler = loop.scheduler.state_dict()
        state.rng = rngs or [ckpt.rng_state()]
        state.elapsed_s = run.earlier_s + time.time() - run.start
        ckpt.save_state(run.out, state)
        if best:
            ckpt.write_best(run.out, state.trainable, state.step)
        state.trainable = state.optimizer = {}  # no second copy held while training
    loop.saved_step = state.step
    accelerator.wait_for_everyone()


def _diverged(run: Run, loop: Loop, what: str) -> TrainingDiverged:
    where = (
        f"last good checkpoint: {run.out / rf.CHECKPOINT} at step {loop.saved_step}"
        if loop.saved_step is not None
        else "no checkpoint was written before it"
    )
    return TrainingDiverged(f"{what} at step {loop.state.step}; stopped ({where})")


def _agree_on_run_dir(
    accelerator: Accelerator, cfg: DictConfig, overrides: list[str], unique: bool
) -> rf.RunFolder:
    """Rank 0 claims the folder (refusing a used one); every rank gets the same answer."""
    answer: list[Any] = [None, None, False, False]
    claim = None
    if accelerator.is_main_process:
        try:
            claim = rf.claim_run_dir(
                cfg.output_dir, cfg.resume, rf.semantic_overrides(overrides), unique
            )
            answer[0], answer[2], answer[3] = str(claim.path), claim.resumed, claim.finished
        except UsageError as err:
            answer[1] = str(err)
    if accelerator.num_processes > 1:
        broadcast_object_list(answer, from_process=0)
        own = Path(str(cfg.output_dir))  # Hydra made one per process; drop ours if unused
        if not accelerator.is_main_process and str(own) != answer[0] and own.is_dir():
            if not any(own.iterdir()):
                own.rmdir()
    if answer[1]:
        raise UsageError(answer[1])
    return claim or rf.RunFolder(Path(answer[0]), None, answer[2], answer[3])


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The data order of an epoch depends only on (seed, epoch): resuming needs just the step."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _to_device(batch: dict[str, torch.Tensor], run: Run) -> dict[str, torch.Tensor]:
    return {k: v.to(run.accelerator.device) for k, v in batch.items()}


@torch.no_grad()
def _dev_loss(run: Run, loop: Loop) -> float:
    """Token-weighted mean loss on the dev pairs (each process takes every world-th batch)."""
    accelerator = run.accelerator
    loop.model.eval()
    size = run.cfg.eval.dev_batch_size
    items = loop.dev_items
    batches = [items[i : i + size] for i in range(0, len(items), size)]
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    for chunk in batches[accelerator.process_index :: accelerator.num_processes]:
        batch = _to_device(loop.collator.train_batch(chunk), run)
        n = loop.collator.target_tokens(batch)
        total[0] += loop.model(**batch).loss.double() * n
        total[1] += n
    total = accelerator.reduce(total, "sum") if accelerator.num_processes > 1 else total
    return float(total[0] / total[1]) if total[1] > 0 else math.inf


def _save_trained(model: torch.nn.Module, method: MethodName, out: Path) -> None:
    """The small artefact of the run: the prefix (P only), or the trained weights."""
    if method is MethodName.prefix:
        model.save_prefix(out / rf.PREFIX_DIR)
    else:
        tensors = {
            n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad
        }
        folder = out / rf.TRAINED_DIR
        folder.mkdir(exist_ok=True)
        rf.atomic_write(
            folder / rf.TRAINED_WEIGHTS,
            lambda f: f.write(_safetensors_bytes(tensors)),
            mode="wb",
        )


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(tensors)


def _check_positions(
    base: torch.nn.Module, cfg: DictConfig, longest_prompt: int, longest_train: int
) -> None:
    """Fail before training when generation would run past a learned position table.

    ``longest_prompt``: the longest eval prompt in tokens (decoder-only: it shares the
    positions with the new tokens; encoder-decoder: the encoder's); ``longest_train``: the
    longest training sequence (x + y, or y for encoder-decoder)."""
    config = base.config
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 0)
    learned = any(
        isinstance(m, torch.nn.Embedding) and ("pos" in name.split(".")[-1] or name.endswith("wpe"))
        for name, m in base.named_modules()
    )
    if not limit or not learned:
        return  # rotary/relative positions have no table to run off
    encoder_decoder = Arch(cfg.model.arch) is Arch.encoder_decoder
    new = cfg.eval.max_new_tokens
    used = (1 if encoder_decoder else longest_prompt) + new
    if used > limit:
        prompt = "" if encoder_decoder else f" after a {longest_prompt}-token prompt"
        raise UsageError(
            f"eval.max_new_tokens={new}{prompt} runs past the {limit} positions of "
            f"model={cfg.model.name}; lower it to at most {limit - used + new}"
        )
    if longest_train > limit or (encoder_decoder and longest_prompt > limit):
        raise UsageError(
            f"training sequences of {max(longest_train, longest_prompt)} tokens run past the "
            f"{limit} positions of model={cfg.model.name}; lower task.max_source_tokens "
            f"({cfg.task.max_source_tokens}) or task.max_target_tokens "
            f"({cfg.task.max_target_tokens})"
        )


def _check_same_config(saved: dict[str, Any], current: dict[str, Any]) -> None:
    old, new = rf.flatten(saved), rf.flatten(current)
    diffs = [k for k in old.keys() | new.keys() if rf.is_semantic(k) and old.get(k) != new.get(k)]
    if diffs:
        raise UsageError(
            f"the checkpoint was written with a different config ({', '.join(sorted(diffs))} "
            "differ); resume with the same overrides"
        )
