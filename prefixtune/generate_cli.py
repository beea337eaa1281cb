"""``prefixtune-generate``: generate with trained prefixes outside a training run.

    prefixtune-generate --prefix e2e=outputs/runs/X/prefix [--prefix web=DIR ...] \\
        (--input FILE|- | --task e2e --split test [--max-examples N] [--data-root DIR]) \\
        --output FILE [--model NAME] [--num-beams 5 --length-penalty 1.0 --max-new-tokens 64]

Input: plain text, one input per line, for the only prefix; or JSONL, one
``{"prefix": name, "input": text}`` per line, mixing prefixes in one run (one frozen model, rows
with different prefixes in the same batches). Output: one line per input in input order, or
JSONL (``--output-format jsonl``). With ``--task``/``--split`` the outputs are also scored and
the metrics JSON printed, as ``prefixtune-score`` does.

The base model is the one the prefixes record (for a run's ``prefix/`` folder: that run's model
config, read from its config.yaml), or ``--model``; every prefix must belong to it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig, OmegaConf

from prefixtune import runfolder as rf
from prefixtune.errors import UsageError

if TYPE_CHECKING:
    from prefixtune.collate import Collator
    from prefixtune.prefix import PrefixModel

FORMATS = ("auto", "text", "jsonl")


@dataclass
class PrefixSpec:
    name: str
    folder: Path


def parse_prefix(spec: str) -> PrefixSpec:
    """``NAME=DIR``, or ``DIR`` alone (named after its folder)."""
    if "=" in spec and not Path(spec).exists():
        name, folder = spec.split("=", 1)
        if not name:
            raise UsageError(f"--prefix {spec!r}: the name before '=' is empty")
    else:
        folder = spec
        name = Path(spec).resolve().name
    return PrefixSpec(name, Path(folder))


def read_inputs(path: str, fmt: str, names: list[str]) -> list[tuple[str, str]]:
    """(prefix name, input text) per line of the input file (``-``: standard input)."""
    if path == "-":
        text, where = sys.stdin.read(), "<stdin>"
    else:
        where = path
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"--input {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"cannot read --input {path} ({err})") from None
    lines = text.splitlines()
    if fmt == "auto":
        first = next((line for line in lines if line.strip()), "")
        fmt = "jsonl" if path.endswith(".jsonl") or first.lstrip().startswith("{") else "text"
    rows = []
    for number, line in enumerate(lines, 1):
        if fmt == "text":
            if len(names) > 1:
                raise UsageError(
                    f"plain-text input has no prefix per line but {len(names)} prefixes were "
                    'given; use JSONL lines {"prefix": name, "input": text}'
                )
            name, source = names[0], line
        else:
            try:
                record = json.loads(line)
            except ValueError as err:
                raise UsageError(f"{where}:{number}: not a JSON object ({err})") from None
            if not isinstance(record, dict) or not isinstance(record.get("input"), str):
                raise UsageError(f'{where}:{number}: expected {{"prefix": name, "input": text}}')
            name = record.get("prefix", names[0] if len(names) == 1 else None)
            if name not in names:
                raise UsageError(
                    f"{where}:{number}: unknown prefix {name!r}; loaded: {', '.join(names)}"
                )
            source = record["input"]
        if not source.strip():
            raise UsageError(f"{where}:{number}: empty input line")
        rows.append((name, source))
    if not rows:
        raise UsageError(f"{where} has no inputs")
    return rows


def base_of(spec: PrefixSpec) -> dict:
    """The base model a prefix folder records (its prefix_config.json's base_model)."""
    from prefixtune.prefix import PrefixError
    from prefixtune.prefix.checkpoint import read_meta

    if not spec.folder.is_dir():
        raise UsageError(f"--prefix {spec.name}: {spec.folder} is not a folder")
    try:
        return read_meta(spec.folder).base_model
    except PrefixError as err:
        raise UsageError(f"--prefix {spec.name}: {err}") from None


def check_same_base(first: str, first_base: dict, name: str, base: dict) -> None:
    """One line when prefix `name` records another base model than prefix `first`."""
    if (base["name"], base["id"]) != (first_base["name"], first_base["id"]):
        raise UsageError(
            f"prefix {name} was trained on {_describe(base)}, but prefix "
            f"{first} on {_describe(first_base)}; one run serves one base model"
        )


def model_config(specs: list[PrefixSpec], model: str | None) -> tuple[DictConfig, dict]:
    """The base model's config, and the run settings (seed, data root, source length) that
    rebuild it exactly: from the prefix's run folder when it is one, else from the preset the
    prefix names (or --model)."""
    from prefixtune.config import ModelConfig, model_preset

    bases = {spec.name: base_of(spec) for spec in specs}
    first = specs[0]
    for name, base in bases.items():
        check_same_base(first.name, bases[first.name], name, base)
    run_config = first.folder.parent / rf.CONFIG
    settings = {"seed": 42, "data_root": None, "max_source_tokens": 256}
    if run_config.is_file() and first.folder.name == rf.PREFIX_DIR:
        cfg = OmegaConf.load(run_config)
        settings = {
            "seed": cfg.get("seed", 42),
            "data_root": cfg.get("data", {}).get("root"),
            "max_source_tokens": cfg.get("task", {}).get("max_source_tokens", 256),
        }
        if model is None:
            return OmegaConf.merge(OmegaConf.structured(ModelConfig), cfg.model), settings
    name = model or bases[first.name]["name"]
    if not name:
        raise UsageError(
            f"prefix {first.name} does not say which base model it belongs to; give --model"
        )
    return model_preset(name), settings


def _describe(base: dict) -> str:
    return f"{base['name'] or '?'} ({base['id'] or 'unknown id'})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prefixtune-generate",
        description="Generate with trained prefixes: one frozen model, one or more prefixes "
        "(mixed in one batch), beam search with continuous batching.",
    )
    p.add_argument(
        "--prefix",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="a prefix folder (a run's prefix/), optionally named; repeatable",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="input file, one input per line, or - for stdin")
    source.add_argument("--task", choices=("e2e", "webnlg", "dart", "xsum"))
    p.add_argument("--input-format", choices=FORMATS, default="auto")
    p.add_argument("--split", default="test", choices=("train", "dev", "test"))
    p.add_argument("--subset", default="all", help="WebNLG: all | seen | unseen")
    p.add_argument("--max-examples", type=int, default=0, help="only the first N inputs")
    p.add_argument("--data-root", help="folder with the official data (default ../shared/data)")
    p.add_argument("--output", required=True, help="output file (must not exist), or -")
    p.add_argument("--output-format", choices=("text", "jsonl"), default="text")
    p.add_argument(
        "--stats",
        metavar="FILE",
        help="with --task: also write the per-input metric statistics (JSON, for "
        "prefixtune-collect's significance tests) to FILE (must not exist)",
    )
    p.add_argument("--model", help="base model preset (default: the one the prefix records)")
    p.add_argument("--num-beams", type=int, default=5)
    p.add_argument("--length-penalty", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--min-new-tokens", type=int, default=0)
    p.add_argument("--max-rows", type=int, default=500, help="beam rows in flight at once")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")
    p.add_argument(
        "--allow-other-base",
        action="store_true",
        help="load a prefix whose recorded base weights differ (a warning)",
    )
    return p


def _check_args(args: argparse.Namespace) -> None:
    for flag, value, low in (
        ("--num-beams", args.num_beams, 1),
        ("--max-new-tokens", args.max_new_tokens, 1),
        ("--min-new-tokens", args.min_new_tokens, 0),
        ("--max-examples", args.max_examples, 0),
    ):
        if value < low:
            raise UsageError(f"{flag} must be >= {low} (got {value})")
    if args.min_new_tokens > args.max_new_tokens:
        raise UsageError("--min-new-tokens exceeds --max-new-tokens")
    if args.max_rows < args.num_beams:
        raise UsageError(
            f"--max-rows={args.max_rows} holds no input of --num-beams={args.num_beams}"
        )
    if args.output != "-" and Path(args.output).exists():
        raise UsageError(f"--output {args.output} already exists; refusing to overwrite it")
    if args.output != "-" and not Path(args.output).absolute().parent.is_dir():
        raise UsageError(f"--output {args.output}: its folder does not exist")
    if args.stats and not args.task:
        raise UsageError("--stats needs --task (statistics come from scoring)")
    if args.stats and Path(args.stats).exists():
        raise UsageError(f"--stats {args.stats} already exists; refusing to overwrite it")


@dataclass
class Loaded:
    """A PrefixModel whose own prefix is the first spec's and the others added by name, with
    the base's model config, its run settings, the Collator that encodes its prompts, and the
    device it is on."""

    model: PrefixModel
    collator: Collator
    model_cfg: DictConfig
    settings: dict
    device: str


def load(
    specs: list[PrefixSpec],
    model: str | None = None,
    *,
    data_root: str | None = None,
    allow_other_base: bool = False,
    cpu: bool = False,
) -> Loaded:
    """The base model the prefixes belong to (or `model`), on the GPU when there is one and not
    `cpu`, with the prefixes loaded; prefixtune-generate and prefixtune-serve both load so."""
    from prefixtune.collate import Collator
    from prefixtune.config import Arch
    from prefixtune.models import load_model
    from prefixtune.prefix import PrefixModel

    model_cfg, settings = model_config(specs, model)
    torch.manual_seed(settings["seed"])  # a tiny random base is rebuilt from its run's seed
    base, tokenizer = load_model(model_cfg, data_root or settings["data_root"])
    device = "cuda" if torch.cuda.is_available() and not cpu else "cpu"
    base.to(device)
    allow = allow_other_base
    prefixed = PrefixModel.from_prefix(base, specs[0].folder, tokenizer, allow_other_base=allow)
    for spec in specs[1:]:
        prefixed.add_prefix(spec.name, spec.folder, allow_other_base=allow)
    collator = Collator(
        tokenizer,
        encoder_decoder=Arch(model_cfg.arch) is Arch.encoder_decoder,
        max_source_tokens=settings["max_source_tokens"],
        max_target_tokens=2,
        decoder_start_token_id=getattr(base.config, "decoder_start_token_id", None),
    )
    return Loaded(prefixed.eval(), collator, model_cfg, settings, device)


def generate(args: argparse.Namespace) -> dict | None:
    """The whole command; returns the metrics when it scored."""
    _check_args(args)
    specs = [parse_prefix(s) for s in args.prefix]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise UsageError(f"two prefixes share a name: {names}")
    if args.task and len(specs) > 1:
        raise UsageError("--task scores one prefix; give one --prefix (or use --input JSONL)")
    model_cfg, settings = model_config(specs, args.model)  # bad prefixes fail before the data

    examples = None
    if args.task:
        from prefixtune.data import default_data_root, load_split

        root = args.data_root or settings["data_root"] or default_data_root()
        examples = load_split(args.task, args.split, root, subset=args.subset)
        if args.max_examples:
            examples = examples[: args.max_examples]
        rows = [(names[0], e.source) for e in examples]
    else:
        rows = read_inputs(args.input, args.input_format, names)
        if args.max_examples:
            rows = rows[: args.max_examples]

    from prefixtune.generate import generate_outputs, merge_outputs

    loaded = load(
        specs,
        args.model,
        data_root=args.data_root,
        allow_other_base=args.allow_other_base,
        cpu=args.cpu,
    )
    internal = {names[0]: None, **{n: n for n in names[1:]}}  # the first is the model's own
    share = generate_outputs(
        loaded.model,
        loaded.collator,
        [source for _, source in rows],
        max_rows=args.max_rows,
        num_beams=args.num_beams,
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens,
        length_penalty=args.length_penalty,
        prefixes=[internal[name] for name, _ in rows] if len(names) > 1 else None,
        device=loaded.device,
    )
    hyps = merge_outputs([share], len(rows))
    if args.output_format == "jsonl":
        lines = [
            json.dumps({"prefix": name, "input": source, "output": hyp}, ensure_ascii=False)
            for (name, source), hyp in zip(rows, hyps, strict=True)
        ]
    else:
        lines = hyps
    text = "".join(line + "\n" for line in lines)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        rf.write_text(args.output, text)
    if examples is None:
        return None
    from prefixtune.metrics import score_examples
    from prefixtune.metrics.stats import write_stats

    scores, stats = score_examples(args.task, hyps, examples)
    if args.stats:
        write_stats(args.stats, stats)
    return scores


def main(argv: list[str] | None = None) -> None:
    from prefixtune.cli import USER_ERRORS, fail

    args = build_parser().parse_args(argv)
    try:
        metrics = generate(args)
    except USER_ERRORS as err:
        fail(str(err))
    if metrics is not None:  # to stderr when the outputs went to stdout
        stream = sys.stderr if args.output == "-" else sys.stdout
        print(json.dumps(metrics, indent=2, sort_keys=True), file=stream)


if __name__ == "__main__":
    main()
