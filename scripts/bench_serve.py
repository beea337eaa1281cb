"""prefixtune-serve under load: N concurrent clients over k prefixes, against two baselines.

    python scripts/bench_serve.py                       # SmolLM2-135M, 64 requests, 4 prefixes
    python scripts/bench_serve.py --device cuda         # on a GPU
    python scripts/bench_serve.py --requests 16 --max-tokens 8   # a quick look

A real server (the app prefixtune-serve runs, uvicorn on a free 127.0.0.1 port, in this process)
serves k text-initialised prefixes (length 10) of SmolLM2-135M saved in a temporary folder. The
requests are the first N E2E test MRs, greedy, max_tokens new tokens each, sent over HTTP:
- mixed: N concurrent clients, request i on prefix i mod k;
- single: the same N requests, all on one prefix (what a single-prefix server could do);
- serial: the same requests as mixed, one at a time.
Reported per scenario: seconds, requests/s, generated tokens/s, p50/p99 latency, and the
ratios the targets are stated in (mixed vs serial, mixed vs single).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEXTS = [
    "Describe the restaurant in one sentence:",
    "Write a short review of this place:",
    "Summarise these facts about a restaurant:",
    "Tell a friend about this restaurant:",
    "A sentence for a travel guide:",
    "An advert for this restaurant:",
    "Explain where to eat:",
    "Facts, then one fluent sentence:",
]


def make_prefixes(folder: Path, count: int) -> None:
    from prefixtune.config import model_preset
    from prefixtune.models import load_model
    from prefixtune.prefix import PrefixConfig, PrefixModel

    base, tok = load_model(model_preset("smollm2-135m"))
    for i in range(count):
        text = TEXTS[i % len(TEXTS)]
        config = PrefixConfig(length=10, reparam=False, init="text", init_text=text)
        model = PrefixModel(base, config, tokenizer=tok)
        model.save_prefix(folder / f"p{i}")
        model.unwrap()


class Server:
    """The prefixtune-serve app in a uvicorn thread on a free loopback port."""

    def __init__(self, argv: list[str]) -> None:
        import socket

        import uvicorn

        from prefixtune.serve.app import create_app
        from prefixtune.serve.cli import build_engine, build_parser

        self.engine = build_engine(build_parser().parse_args(argv))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(self.engine), log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> Server:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def run(url: str, bodies: list[dict], clients: int) -> dict:
    """Send the bodies with `clients` concurrent clients; the scenario's numbers."""

    def send(body: dict) -> tuple[float, int, str]:
        start = time.perf_counter()
        response = httpx.post(url + "/v1/completions", json=body, timeout=600)
        response.raise_for_status()
        out = response.json()
        return time.perf_counter() - start, out["usage"]["completion_tokens"], out

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(send, bodies))
    seconds = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    return {
        "requests": len(bodies),
        "clients": clients,
        "seconds": seconds,
        "requests_per_s": len(bodies) / seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "p50_latency_s": statistics.median(latencies),
        "p99_latency_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "texts": [r[2]["choices"][0]["text"] for r in results],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--clients", type=int, default=0, help="default: one per request")
    p.add_argument("--prefixes", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-rows", type=int, default=128)
    p.add_argument("--skip-serial", action="store_true")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no GPU is visible")
    from prefixtune.data import default_data_root, load_split

    sources = [e.source for e in load_split("e2e", "test", default_data_root())]
    sources = [sources[i % len(sources)] for i in range(args.requests)]
    clients = args.clients or args.requests
    report: dict = {
        "command": " ".join(["python", *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
            "load_average": os.getloadavg(),
        },
        "settings": {
            "model": "smollm2-135m",
            "prefixes": args.prefixes,
            "prefix_length": 10,
            "requests": args.requests,
            "max_tokens": args.max_tokens,
            "greedy": True,
            "max_rows": args.max_rows,
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_prefixes(folder, args.prefixes)
        argv = ["--prefixes", str(folder), "--max-rows", str(args.max_rows)]
        argv += ["--max-queue", str(max(256, args.requests))]
        argv += [] if args.device == "cuda" else ["--cpu"]
        with Server(argv) as server:

            def bodies(prefix_of) -> list[dict]:
                return [
                    {
                        "model": prefix_of(i),
                        "prompt": s,
                        "max_tokens": args.max_tokens,
                        "temperature": 0,
                    }
                    for i, s in enumerate(sources)
                ]

            mixed = bodies(lambda i: f"p{i % args.prefixes}")
            # warm-up with the longest prompts: the pool's cache grows to its widest here, not
            # during the first scenario
            longest = sorted(mixed, key=lambda b: -len(b["prompt"]))[:8]
            run(server.url, longest, len(longest))
            scenarios = {
                "mixed": (mixed, clients),
                "single": (bodies(lambda i: "p0"), clients),
            }
            if not args.skip_serial:
                scenarios["serial"] = (mixed, 1)
            results = {}
            for name, (todo, n) in scenarios.items():
                results[name] = run(server.url, todo, n)
                shown = {k: v for k, v in results[name].items() if k != "texts"}
                print(name, json.dumps(shown), flush=True)
    if "serial" in results:
        same = results["serial"]["texts"] == results["mixed"]["texts"]
        report["mixed_equals_serial_outputs"] = same
    for name in results:
        results[name].pop("texts")
    report["results"] = results
    mixed_tps = results["mixed"]["tokens_per_s"]
    report["ratios"] = {"mixed_vs_single_throughput": mixed_tps / results["single"]["tokens_per_s"]}
    if "serial" in results:
        report["ratios"]["mixed_vs_serial_throughput"] = (
            mixed_tps / results["serial"]["tokens_per_s"]
        )
    print(json.dumps({k: report[k] for k in report if k != "results"}, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
