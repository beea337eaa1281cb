"""``prefixtune-serve``: serve every prefix folder under DIR from one frozen base model.

    prefixtune-serve --prefixes DIR [--model NAME] [--host 127.0.0.1 --port 8000] [--api-key KEY]
                     [--max-rows N] [--max-queue N] [--max-prompt-tokens N]

Each subfolder of DIR that prefixtune-generate accepts (a prefix folder, or a run folder with
its prefix/) is served under the subfolder's name; the base model's own name serves no prefix.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from prefixtune.errors import UsageError
from prefixtune.generate_cli import PrefixSpec

API_KEY_ENV = "PREFIXTUNE_API_KEY"  # the key, kept off the command line (ps shows arguments)


def find_prefixes(folder: Path) -> list[PrefixSpec]:
    """The prefix folders under `folder`, named after their subfolder, in name order."""
    from prefixtune.prefix.checkpoint import CONFIG

    if not folder.is_dir():
        raise UsageError(f"--prefixes {folder} is not a folder")
    specs = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if (sub / CONFIG).is_file():
            specs.append(PrefixSpec(sub.name, sub))
        elif (sub / "prefix" / CONFIG).is_file():
            specs.append(PrefixSpec(sub.name, sub / "prefix"))
    if not specs:
        raise UsageError(
            f"--prefixes {folder} has no prefix folder (a subfolder with {CONFIG}, or a run "
            "folder with prefix/)"
        )
    return specs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prefixtune-serve",
        description="An OpenAI-compatible completions server for many prefixes on one frozen "
        "model, rows with different prefixes in one batch.",
    )
    p.add_argument("--prefixes", required=True, metavar="DIR", help="a folder of prefix folders")
    p.add_argument("--model", help="base model preset (default: the one the prefixes record)")
    p.add_argument("--host", default="127.0.0.1", help="default: loopback only")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"required as 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}); the admin "
        "calls (POST/DELETE /v1/prefixes) need one",
    )
    p.add_argument("--max-rows", type=int, default=128, help="decoding rows per pool")
    p.add_argument("--max-queue", type=int, default=256, help="waiting jobs before 429")
    p.add_argument(
        "--max-prompt-tokens",
        type=int,
        help="longest prompt in tokens, with its end token (default: the run's max source)",
    )
    p.add_argument("--max-new-tokens", type=int, default=256, help="largest max_tokens allowed")
    p.add_argument("--data-root", help="the data folder a run's tokenizer may need")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")
    p.add_argument("--allow-other-base", action="store_true")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def build_engine(args: argparse.Namespace):
    """Load the base model and the prefixes (one-line UsageError/PrefixError on bad input)."""
    from prefixtune.generate_cli import load

    from .engine import Engine

    for flag, value in (
        ("--max-rows", args.max_rows),
        ("--max-queue", args.max_queue),
        ("--max-new-tokens", args.max_new_tokens),
        ("--max-prompt-tokens", args.max_prompt_tokens or 1),
    ):
        if value < 1 and not (flag == "--max-queue" and value == 0):
            raise UsageError(f"{flag} must be >= 1 (got {value})")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535 (got {args.port})")
    folder = Path(args.prefixes)
    specs = find_prefixes(folder)
    loaded = load(
        specs,
        args.model,
        data_root=args.data_root,
        allow_other_base=args.allow_other_base,
        cpu=args.cpu,
    )
    base_name = str(loaded.model_cfg.name)
    clash = [s.name for s in specs if s.name == base_name]
    if clash:
        raise UsageError(f"prefix folder {clash[0]} has the base model's name; rename it")
    return Engine(
        loaded,
        specs,
        folder=folder.resolve(),
        base_name=base_name,
        max_rows=args.max_rows,
        max_queue=args.max_queue,
        max_prompt_tokens=args.max_prompt_tokens,
        max_new_tokens=args.max_new_tokens,
        allow_other_base=args.allow_other_base,
    )


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from prefixtune.cli import USER_ERRORS, fail

    from .app import create_app

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(message)s")
    try:
        engine = build_engine(args)
    except USER_ERRORS as err:
        fail(str(err))
    logging.getLogger("prefixtune.serve").info(
        "serving %s with prefixes %s on http://%s:%d/v1",
        engine.base_name,
        ", ".join(engine.names),
        args.host,
        args.port,
    )
    app = create_app(engine, args.api_key)
    # on SIGINT/SIGTERM uvicorn stops accepting, lets open requests finish (30 s at most), then
    # the app's shutdown stops the engine
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
