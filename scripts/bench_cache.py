"""What generate()'s prefixed KV cache saves: beam search with it, with the prefix concatenated
to transformers' DynamicCache at every step instead (what attention does when the caller passes
a cache), and with the base model alone; side by side in one process, round by round.

    python scripts/bench_cache.py                      # SmolLM2-135M and BART-large-shaped
    taskset -c 1 python scripts/bench_cache.py --threads 1 --rounds 8

SmolLM2-135M: 8 prompts of --prompt tokens; BART: random weights in bart-large's shape (speed
does not depend on the values), 2 sources of --source tokens, the summarisation setting where
the cross-attention's cache is long. Writes JSON and Markdown to --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import load_smollm2, round_ratios  # noqa: E402  (scripts/bench.py)

from prefixtune.prefix import PrefixConfig, PrefixModel  # noqa: E402


def smollm2(args):
    from transformers import DynamicCache

    base = load_smollm2()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, base.config.vocab_size - 100, (8, args.prompt), generator=g)
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pad_token_id=0)
    return base, inputs, DynamicCache


def bart(args):
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        DynamicCache,
        EncoderDecoderCache,
    )

    torch.manual_seed(0)
    base = BartForConditionalGeneration(BartConfig())  # bart-large's shape
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, base.config.vocab_size - 100, (2, args.source), generator=g)
    return base, dict(input_ids=ids), lambda: EncoderDecoderCache(DynamicCache(), DynamicCache())


def measure(name, load, args) -> dict:
    base, inputs, plain_cache = load(args)
    base = base.eval().requires_grad_(False)
    ours = PrefixModel(copy.deepcopy(base), PrefixConfig(length=args.length)).eval()
    gen = dict(
        num_beams=5, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False
    )
    cases = {
        "ours": lambda: ours.generate(**inputs, **gen),
        "concatenated": lambda: ours.generate(**inputs, cache=plain_cache(), **gen),
        "base": lambda: base.generate(**inputs, **gen),
    }
    same = torch.equal(cases["ours"](), cases["concatenated"]())  # also the warm-up
    cases["base"]()
    seconds = {k: [] for k in cases}
    for r in range(args.rounds):
        for case, run in cases.items():
            start = time.perf_counter()
            run()
            seconds[case].append(time.perf_counter() - start)
        print(f"{name} round {r}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in seconds.items()))
    ratios = {
        case: statistics.median(round_ratios(seconds, case, "base"))
        for case in ("ours", "concatenated")
    }
    return {"same_beams": same, "seconds": seconds, "ratio_to_base": ratios}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--length", type=int, default=10, help="prefix length L")
    p.add_argument("--prompt", type=int, default=24, help="SmolLM2 prompt tokens")
    p.add_argument("--source", type=int, default=400, help="BART source tokens")
    p.add_argument("--new-tokens", type=int, default=20)
    p.add_argument("--models", nargs="+", default=["smollm2-135m", "bart-large-random"])
    p.add_argument("--out", default=None, help="default: outputs/bench_cache/<time>")
    args = p.parse_args()
    loaders = {"smollm2-135m": smollm2, "bart-large-random": bart}
    unknown = sorted(set(args.models) - set(loaders))
    if unknown:
        p.error(f"unknown model {unknown[0]!r}; choose from {sorted(loaders)}")
    torch.set_num_threads(args.threads)
    out = Path(args.out or f"outputs/bench_cache/{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and any(out.iterdir()):
        sys.exit(f"error: {out} exists and is not empty; pass another --out")
    out.mkdir(parents=True, exist_ok=True)
    results = {name: measure(name, loaders[name], args) for name in args.models}
    lines = [
        f"# generate(): prefixed cache vs concatenation ({args.threads} threads, L={args.length}, "
        f"beam 5, {args.new_tokens} new tokens, median of {args.rounds} rounds)",
        "",
        "| model | base s | ours s | ours / base | concatenated s | concatenated / base |"
        " same beams |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        med = {k: statistics.median(v) for k, v in r["seconds"].items()}
        lines.append(
            f"| {name} | {med['base']:.3f} | {med['ours']:.3f} | {r['ratio_to_base']['ours']:.3f} "
            f"| {med['concatenated']:.3f} | {r['ratio_to_base']['concatenated']:.3f} "
            f"| {'yes' if r['same_beams'] else 'NO'} |"
        )
    lines += ["", "Ratios: median over rounds of the ratio within a round."]
    (out / "bench_cache.json").write_text(json.dumps({"settings": vars(args), **results}, indent=1))
    (out / "bench_cache.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: {out}/bench_cache.json, {out}/bench_cache.md")


if __name__ == "__main__":
    main()
