"""One experiment: train (AdamW + linear decay, dev loss for model selection and early stopping),
then generate with the best parameters and score. ``train(cfg)`` is a plain function so tests
call it without Hydra; ``prefixtune/cli.py`` is the thin Hydra wrapper.

The same code runs on CPU, one GPU, or several processes (``accelerate launch`` / ``torchrun``):
each process takes its slice of every global batch and only rank 0 writes files.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from prefixtune import checkpoint as ckpt
from prefixtune import runinfo
from prefixtune.collate import Collator, Encoded
from prefixtune.config import (
    Arch,
    EvalSplit,
    MethodName,
    TaskName,
    enum_value,
    flatten,
    is_semantic,
    semantic_overrides,
    to_container,
    validate,
)
from prefixtune.errors import UsageError
from prefixtune.generate import generate_outputs, merge_outputs
from prefixtune.loggers import NullLogger, make_logger
from prefixtune.models import apply_method, load_model, parameter_counts

log = logging.getLogger(__name__)


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
    accelerator = Accelerator(cpu=cfg.cpu)
    claim = _agree_on_run_dir(accelerator, cfg, overrides, unique_dir)
    if claim.finished:
        log.warning("resume=true: the run in %s already finished; nothing to do", claim.path)
        metrics = json.loads((claim.path / ckpt.METRICS).read_text())
        return {**metrics, "output_dir": str(claim.path)}
    if claim.path != Path(str(cfg.output_dir)):
        log.info("%s the run in %s", "resuming" if claim.resumed else "writing", claim.path)
    try:
        return _train(cfg, overrides, accelerator, claim, start)
    except BaseException:
        claim.release(failed=True)
        raise
    finally:
        claim.release()


def _train(
    cfg: DictConfig,
    overrides: list[str],
    accelerator: Accelerator,
    claim: ckpt.RunFolder,
    start: float,
) -> dict[str, Any]:
    main = accelerator.is_main_process
    out = claim.path
    if main:
        for tmp in ckpt.remove_stale_temp_files(out):
            log.info("removed %s, left by an interrupted write", tmp)
    resolved = to_container(cfg)
    state = ckpt.load_checkpoint(out)  # before the slow steps: a bad file fails at once
    if state is not None:
        _check_same_config(state["config"], resolved)

    # ---- data -------------------------------------------------------------------------------
    from prefixtune.data import default_data_root, load_split, low_data_split, training_pairs

    root = cfg.data.root or default_data_root()
    task = enum_value(cfg.task.name)
    subset = cfg.task.subset
    allow = cfg.data.allow_modified
    if cfg.train.low_data > 0:
        pool = load_split(task, "train", root, subset=subset, allow_modified=allow)
        train_ex, dev_ex = low_data_split(pool, cfg.train.low_data, cfg.train.low_data_seed)
    else:
        train_ex = load_split(task, "train", root, subset=subset, allow_modified=allow)
        dev_ex = load_split(task, "dev", root, subset=subset, allow_modified=allow)
    train_pairs = training_pairs(train_ex)
    if 0 < cfg.train.max_train_examples < len(train_pairs):
        keep = sorted(
            random.Random(cfg.seed).sample(range(len(train_pairs)), cfg.train.max_train_examples)
        )
        train_pairs = [train_pairs[i] for i in keep]
    dev_pairs = training_pairs(dev_ex)[: cfg.train.max_dev_examples]
    eval_sets = _eval_sets(cfg, task, root, subset, dev_ex, load_split)

    # ---- model ------------------------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    base, tokenizer = load_model(cfg.model, root)
    encoder_decoder = Arch(enum_value(cfg.model.arch)) is Arch.encoder_decoder
    method = MethodName(enum_value(cfg.method.name))
    model = apply_method(base, cfg, tokenizer)
    counts = parameter_counts(model, base)
    collator = Collator(
        tokenizer,
        encoder_decoder=encoder_decoder,
        max_source_tokens=cfg.task.max_source_tokens,
        max_target_tokens=cfg.task.max_target_tokens,
        decoder_start_token_id=getattr(base.config, "decoder_start_token_id", None),
    )
    train_items = [collator.encode(x, y) for x, y in train_pairs]
    dev_items = [collator.encode(x, y) for x, y in dev_pairs]
    if not train_items:
        raise UsageError(f"task={task} has no training examples under {root}")
    prompts = [len(collator.encode_source(e.source)) for _, ex in eval_sets for e in ex]
    sources = [len(it.source) for it in train_items + dev_items] if encoder_decoder else []
    lengths = [len(it.target) + (0 if encoder_decoder else len(it.source)) for it in train_items]
    _check_positions(base, cfg, max(prompts + sources, default=0), max(lengths))

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    world = accelerator.num_processes
    global_batch = cfg.train.batch_size * world
    steps_per_epoch = max(1, len(train_items) // global_batch)
    total_steps = (
        cfg.train.max_steps if cfg.train.max_steps > 0 else cfg.train.epochs * steps_per_epoch
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.train.warmup_steps, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)
    eval_every = cfg.train.eval_every if cfg.train.eval_every > 0 else steps_per_epoch
    ckpt_every = cfg.train.checkpoint_every if cfg.train.checkpoint_every > 0 else eval_every

    # ---- resume -----------------------------------------------------------------------------
    step, best, bad_evals = 0, {"loss": math.inf, "step": 0, "params": None}, 0
    saved_step: int | None = None  # the step of the checkpoint on disk, if any
    earlier_s = 0.0  # wall time of earlier segments of a resumed run, up to their checkpoints
    if state is not None:
        ckpt.load_trainable(raw, state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, best, bad_evals = state["step"], state["best"], state["bad_evals"]
        saved_step = step
        earlier_s = state.get("elapsed_s", 0.0)
        ckpt.set_rng_state(state["rng"][accelerator.process_index])
        log.info("resumed from step %d of %d", step, total_steps)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if state is None:
            ckpt.write_text(out / "config.yaml", OmegaConf.to_yaml(resolved))
            ckpt.write_json(
                out / ckpt.OVERRIDES,
                {"overrides": overrides, "semantic": semantic_overrides(overrides)},
            )
    logger = make_logger(cfg, out, step if state else None) if main else NullLogger()

    def diverged(what: str) -> TrainingDiverged:
        where = (
            f"last good checkpoint: {out / ckpt.CHECKPOINT} at step {saved_step}"
            if saved_step is not None
            else "no checkpoint was written before it"
        )
        return TrainingDiverged(f"{what} at step {step}; stopped ({where})")

    def save_state() -> None:
        nonlocal saved_step
        # A checkpoint is good only with finite parameters (the losses were checked already).
        if not all(bool(torch.isfinite(p).all()) for p in params):
            raise diverged("the parameters became NaN or inf")
        rngs = gather_object([ckpt.rng_state()]) if world > 1 else [ckpt.rng_state()]
        if main:
            ckpt.save_checkpoint(
                out,
                {
                    "step": step,
                    "trainable": ckpt.trainable_state(raw),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "best": best,
                    "bad_evals": bad_evals,
                    "rng": rngs,
                    "config": resolved,
                    "elapsed_s": earlier_s + time.time() - start,
                },
            )
        saved_step = step
        accelerator.wait_for_everyone()

    # ---- training loop ----------------------------------------------------------------------
    rank = accelerator.process_index
    bar = tqdm(total=total_steps, initial=step, desc="train", disable=not main, unit="step")
    stop = False
    try:
        while step < total_steps and not stop:
            epoch, pos = divmod(step, steps_per_epoch)
            order = _epoch_order(len(train_items), cfg.seed, epoch)
            chunk = [
                order[(pos * global_batch + j) % len(order)]
                for j in range(rank * cfg.train.batch_size, (rank + 1) * cfg.train.batch_size)
            ]
            batch = _to_device(collator.train_batch([train_items[i] for i in chunk]), accelerator)
            model.train()
            loss = model(**batch).loss
            losses = accelerator.gather(loss.detach().reshape(1))
            if not torch.isfinite(losses).all():
                step += 1
                raise diverged(f"loss became {loss.item()}")
            accelerator.backward(loss)
            if cfg.train.grad_clip > 0:
                accelerator.clip_grad_norm_(params, cfg.train.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            lr = scheduler.get_last_lr()[0]
            logger.log({"step": step, "split": "train", "loss": losses.mean().item(), "lr": lr})
            if step % eval_every == 0 or step == total_steps:
                dev_loss = _dev_loss(model, collator, dev_items, cfg, accelerator)
                if not math.isfinite(dev_loss) and dev_items:
                    logger.log({"step": step, "split": "dev", "loss": None, "best": False})
                    raise diverged(f"dev loss became {dev_loss}")
                improved = dev_loss < best["loss"]
                if improved:
                    best = {"loss": dev_loss, "step": step, "params": ckpt.trainable_state(raw)}
                    bad_evals = 0
                else:
                    bad_evals += 1
                logger.log({"step": step, "split": "dev", "loss": dev_loss, "best": improved})
                bar.set_postfix(dev_loss=f"{dev_loss:.4f}")
                stop = 0 < cfg.train.patience <= bad_evals
            if step % ckpt_every == 0 or step == total_steps or stop:
                save_state()
        bar.close()

        # ---- evaluate the best parameters -----------------------------------------------------
        if best["params"] is not None:
            ckpt.load_trainable(raw, best["params"])
        if main:
            _save_trained(raw, method, out)
        metrics: dict[str, Any] = {
            "dev_loss": best["loss"] if best["params"] is not None else None,
            "best_step": best["step"],
            "steps": step,
        }
        for split, examples in eval_sets:
            shares = generate_outputs(
                raw,
                collator,
                [e.source for e in examples],
                batch_size=cfg.eval.batch_size,
                num_beams=cfg.eval.num_beams,
                max_new_tokens=cfg.eval.max_new_tokens,
                min_new_tokens=cfg.eval.min_new_tokens,
                length_penalty=cfg.eval.length_penalty,
                rank=rank,
                world_size=world,
                device=accelerator.device,
                desc=f"generate {split}",
                show_progress=main,
            )
            all_shares = gather_object([shares]) if world > 1 else [shares]
            if not main:
                continue
            hyps = merge_outputs(all_shares, len(examples))
            ckpt.write_text(out / f"generations_{split}.txt", "".join(h + "\n" for h in hyps))
            if cfg.eval.score:
                metrics[split] = _score(task, hyps, examples)
                log.info("%s scores: %s", split, metrics[split])
        accelerator.wait_for_everyone()
    except BaseException:
        logger.close()
        raise

    if main:
        segment_s = time.time() - start
        info = {
            "status": "finished",
            "git": runinfo.git_info(),
            "packages": runinfo.package_versions(),
            "environment": runinfo.environment(),
            "processes": world,
            "parameters": counts,
            "wall_time_s": earlier_s + segment_s,
            "wall_time_this_segment_s": segment_s,
            "memory": runinfo.peak_memory_mb(),
            "resumed_from_step": state["step"] if state else None,
        }
        ckpt.write_json(out / "run.json", info)
        ckpt.write_json(out / ckpt.METRICS, metrics)
        logger.summary(metrics)
    logger.close()
    metrics["output_dir"] = str(out)
    return metrics


def _agree_on_run_dir(
    accelerator: Accelerator, cfg: DictConfig, overrides: list[str], unique: bool
) -> ckpt.RunFolder:
    """Rank 0 claims the folder (refusing a used one); every rank gets the same answer."""
    answer: list[Any] = [None, None, False, False]
    claim = None
    if accelerator.is_main_process:
        try:
            claim = ckpt.claim_run_dir(
                cfg.output_dir, cfg.resume, semantic_overrides(overrides), unique
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
    return claim or ckpt.RunFolder(Path(answer[0]), None, answer[2], answer[3])


def _eval_sets(cfg, task, root, subset, dev_ex, load_split) -> list[tuple[str, list]]:
    split = EvalSplit(enum_value(cfg.eval.split))
    names = {EvalSplit.dev: ["dev"], EvalSplit.test: ["test"], EvalSplit.both: ["dev", "test"]}
    sets = []
    for name in names.get(split, []):
        test_subset = cfg.task.eval_subset or subset  # extrapolation: train seen, test all
        examples = dev_ex if name == "dev" else load_split(task, "test", root, subset=test_subset)
        if cfg.eval.max_examples > 0:
            examples = examples[: cfg.eval.max_examples]
        sets.append((name, examples))
    return sets


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The data order of an epoch depends only on (seed, epoch): resuming needs just the step."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _to_device(batch: dict[str, torch.Tensor], accelerator: Accelerator) -> dict[str, torch.Tensor]:
    return {k: v.to(accelerator.device) for k, v in batch.items()}


@torch.no_grad()
def _dev_loss(
    model: torch.nn.Module,
    collator: Collator,
    items: list[Encoded],
    cfg: DictConfig,
    accelerator: Accelerator,
) -> float:
    """Token-weighted mean loss on the dev pairs (each process takes every world-th batch)."""
    model.eval()
    size = cfg.eval.batch_size
    batches = [items[i : i + size] for i in range(0, len(items), size)]
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    for chunk in batches[accelerator.process_index :: accelerator.num_processes]:
        batch = _to_device(collator.train_batch(chunk), accelerator)
        n = collator.target_tokens(batch)
        total[0] += model(**batch).loss.double() * n
        total[1] += n
    total = accelerator.reduce(total, "sum") if accelerator.num_processes > 1 else total
    return float(total[0] / total[1]) if total[1] > 0 else math.inf


def _score(task: str, hyps: list[str], examples: list) -> dict[str, Any]:
    from prefixtune.metrics import score

    refs = [list(e.references) for e in examples]
    seen = (
        [bool(e.meta.get("seen")) for e in examples] if TaskName(task) is TaskName.webnlg else None
    )
    return score(task, hyps, refs, seen=seen)


def _save_trained(model: torch.nn.Module, method: MethodName, out: Path) -> None:
    """The small artefact of the run: the prefix (P only), or the trained weights."""
    if method is MethodName.prefix:
        model.save_prefix(out / "prefix")
    else:
        tensors = {
            n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad
        }
        folder = out / "trained"
        folder.mkdir(exist_ok=True)
        ckpt.atomic_write(
            folder / "trainable.safetensors",
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
    encoder_decoder = Arch(enum_value(cfg.model.arch)) is Arch.encoder_decoder
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
    old, new = flatten(saved), flatten(current)
    diffs = [k for k in old.keys() | new.keys() if is_semantic(k) and old.get(k) != new.get(k)]
    if diffs:
        raise UsageError(
            f"the checkpoint was written with a different config ({', '.join(sorted(diffs))} "
            "differ); resume with the same overrides"
        )
