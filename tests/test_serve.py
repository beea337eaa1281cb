"""prefixtune-serve on tiny random models, through a live uvicorn server on 127.0.0.1: the real
openai client and raw HTTP; outputs equal to prefixtune-generate's whatever shares the batch;
every error case; disconnects, shutdown and a bounded load test."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import uvicorn
from conftest import TINY, compose_cfg

from prefixtune.generate_cli import main as generate_main
from prefixtune.serve.app import create_app
from prefixtune.serve.cli import build_engine, build_parser
from prefixtune.serve.cli import main as serve_main
from prefixtune.train import train

KEY = "test-key"
SOURCES = [
    "name : Alimentum | area : city centre",
    "name : Zizzi | food : Thai",
    "food : Thai | near : Bar",
    "name : The Eagle | priceRange : cheap | customer rating : 5 out of 5",
    "area : riverside",
    "name : Cotto | eatType : coffee shop | near : The Bakers",
]
BOUND_S = 120  # generous: any request that takes longer is a hang


class LiveServer:
    """A real uvicorn server for an app, in a thread, on a free loopback port."""

    def __init__(self, app) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=20)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + BOUND_S
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(BOUND_S)
        assert not self.thread.is_alive(), "server did not stop"
        self.sock.close()


def serve_args(folder, *extra) -> list[str]:
    return ["--prefixes", str(folder), *extra]


def start(folder, *extra, api_key=KEY) -> LiveServer:
    engine = build_engine(build_parser().parse_args(serve_args(folder, *extra)))
    return LiveServer(create_app(engine, api_key, stop_timeout=20))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four tiny GPT-2 runs (one base: same seed) with different prefixes under served/, a fifth
    outside it (loaded later through the API), and a tiny Llama run (another base)."""
    root = tmp_path_factory.mktemp("serve")
    settings = {
        "served/a": [],
        "served/b": ["prefix.length=3", "train.lr=1e-2"],
        "served/c": ["prefix.length=7", "train.lr=3e-2"],
        "served/d": ["prefix.length=2", "train.lr=5e-2"],
        "later/e": ["prefix.length=5", "train.lr=2e-2"],
        "other/llama": ["model=tiny-llama"],
    }
    for name, extra in settings.items():
        overrides = [*TINY, "eval.split=dev", *extra]
        train(compose_cfg(overrides, root / name), overrides)
    return root


@pytest.fixture(scope="module")
def server(runs):
    with start(runs / "served", "--max-rows", "16", "--max-queue", "48") as live:
        yield live


def offline(runs, requests: list[tuple[str, str]], *gen) -> list[str]:
    """prefixtune-generate's outputs for (prefix, input) pairs of the tiny runs."""
    names = sorted({name for name, _ in requests})
    where = {n: runs / ("later" if n == "e" else "served") / n / "prefix" for n in names}
    return offline_from(runs, where, requests, *gen)


def offline_from(tmp, folders: dict, requests: list[tuple[str, str]], *gen) -> list[str]:
    """prefixtune-generate's outputs for (prefix, input) pairs, mixing prefixes in one JSONL."""
    names = sorted({name for name, _ in requests})
    source = tmp / f"in-{time.monotonic_ns()}.jsonl"
    source.write_text("".join(json.dumps({"prefix": p, "input": x}) + "\n" for p, x in requests))
    dest = tmp / f"out-{time.monotonic_ns()}.jsonl"
    prefixes = [arg for n in names for arg in ("--prefix", f"{n}={folders[n]}")]
    args = [*prefixes, "--input", str(source), "--output", str(dest), "--output-format", "jsonl"]
    generate_main([*args, *gen])
    return [json.loads(line)["output"] for line in dest.read_text().splitlines()]


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=BOUND_S)


def post(server, body, *, key=KEY, path="/v1/completions") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.url + path, json=body, headers=headers, timeout=BOUND_S)


def test_32_concurrent_requests_over_4_prefixes_equal_prefixtune_generate(runs, server):
    """Greedy (max_tokens 3..6) and beam search (2 beams) requests over four prefixes of three
    lengths, all at once: each one's text is what prefixtune-generate gives for it alone."""
    names = ["a", "b", "c", "d"]
    jobs = [
        (names[i % 4], SOURCES[i % len(SOURCES)], 3 + i % 4, 1 + (i % 3 == 0)) for i in range(32)
    ]
    expected = {}
    for tokens in (3, 4, 5, 6):
        for beams in (1, 2):
            chosen = [(p, x) for p, x, t, b in jobs if (t, b) == (tokens, beams)]
            if chosen:
                gen = ["--num-beams", str(beams), "--max-new-tokens", str(tokens)]
                expected.update(zip(chosen, offline(runs, chosen, *gen), strict=True))
    api = client(server)

    def ask(job):
        prefix, source, tokens, beams = job
        extra = {"num_beams": beams} if beams > 1 else {}
        out = api.completions.create(
            model=prefix,
            prompt=source,
            max_tokens=tokens,
            temperature=0,
            extra_body=extra,
        )
        return out.choices[0].text, out.choices[0].finish_reason

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, jobs))
    for (prefix, source, tokens, beams), (text, reason) in zip(jobs, answers, strict=True):
        assert text == expected[(prefix, source)], (prefix, source, tokens, beams)
        assert reason in ("stop", "length")
    assert len({text for text, _ in answers}) > 4  # the prefixes really differ


def test_streaming_with_the_openai_client_gives_the_same_text(runs, server):
    api = client(server)
    want = offline(runs, [("b", SOURCES[3])], "--num-beams", "1", "--max-new-tokens", "8")[0]
    chunks = list(
        api.completions.create(
            model="b", prompt=SOURCES[3], max_tokens=8, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    beam = offline(runs, [("c", SOURCES[0])], "--num-beams", "2", "--max-new-tokens", "6")[0]
    streamed = api.completions.create(
        model="c", prompt=SOURCES[0], max_tokens=6, stream=True, extra_body={"num_beams": 2}
    )
    assert "".join(c.choices[0].text for c in streamed) == beam


def test_a_list_of_prompts_n_choices_and_stop_strings(runs, server):
    api = client(server)
    want = offline(runs, [("a", SOURCES[0]), ("a", SOURCES[1])], "--num-beams", "1")
    out = api.completions.create(model="a", prompt=SOURCES[:2], max_tokens=64, temperature=0, n=2)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert [c.text for c in out.choices] == [want[0], want[0], want[1], want[1]]
    assert out.usage.completion_tokens > 0 and out.usage.prompt_tokens > 0
    text = want[0]
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), text
    cut = api.completions.create(
        model="a", prompt=SOURCES[0], max_tokens=64, temperature=0, stop=stop
    )
    assert cut.choices[0].text == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = api.completions.create(
        model="a", prompt=SOURCES[0], max_tokens=64, temperature=0, stop=[stop], stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == text[: text.find(stop)]


def test_seeded_sampling_does_not_depend_on_what_shares_the_batch(server):
    api = client(server)
    body = dict(model="d", prompt=SOURCES[2], max_tokens=12, temperature=1.5, top_p=0.9, seed=7)
    alone = [api.completions.create(**body).choices[0].text for _ in range(2)]
    assert alone[0] == alone[1]

    def crowd(i):
        return (
            api.completions.create(
                model="abcd"[i % 4], prompt=SOURCES[i % 6], max_tokens=12, temperature=1.0, seed=i
            )
            .choices[0]
            .text
        )

    with ThreadPoolExecutor(12) as pool:
        others = [pool.submit(crowd, i) for i in range(10)]
        shared = pool.submit(lambda: api.completions.create(**body).choices[0].text)
        assert shared.result() == alone[0]
        assert all(isinstance(o.result(), str) for o in others)
    samples = {
        api.completions.create(**{**body, "seed": seed}).choices[0].text for seed in range(6)
    }
    assert len(samples) > 1  # the seed matters: it samples


def test_the_base_models_own_name_serves_no_prefix(server):
    models = httpx.get(
        server.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=BOUND_S
    ).json()
    ids = [m["id"] for m in models["data"]]
    assert ids[1:] == ["a", "b", "c", "d"]
    base = ids[0]
    out = post(server, {"model": base, "prompt": SOURCES[0], "max_tokens": 6, "temperature": 0})
    assert out.status_code == 200
    with_prefix = post(
        server, {"model": "a", "prompt": SOURCES[0], "max_tokens": 6, "temperature": 0}
    )
    assert out.json()["choices"][0]["text"] != with_prefix.json()["choices"][0]["text"]


def test_no_prefix_equals_the_base_models_greedy_generate(runs):
    import torch

    from prefixtune.generate import decode_until_eos

    engine = build_engine(build_parser().parse_args(serve_args(runs / "served")))
    with LiveServer(create_app(engine, None)) as live:
        name = engine.base_name
        got = httpx.post(
            live.url + "/v1/completions",
            json={"model": name, "prompt": SOURCES[3], "max_tokens": 6, "temperature": 0},
            timeout=BOUND_S,
        ).json()["choices"][0]["text"]
        forbidden = httpx.post(live.url + "/v1/prefixes", json={"name": "e"}, timeout=BOUND_S)
        assert forbidden.status_code == 403  # admin calls need a key
    collator = engine.collator
    ids = torch.tensor([collator.encode_source(SOURCES[3])])
    with torch.no_grad():
        out = engine.model.base.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=6,
            do_sample=False,
            num_beams=1,
            pad_token_id=collator.pad,
            eos_token_id=collator.eos,
        )
    assert got == decode_until_eos(collator, out[0, ids.shape[1] :].tolist())


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"model": "a", "prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
        ({"model": "a", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "a", "prompt": "x", "max_tokens": 100000}, 400, "max_tokens"),
        ({"model": "a", "prompt": "x", "temperature": 5}, 400, "temperature"),
        ({"model": "a", "prompt": "x", "top_p": 0}, 400, "top_p"),
        ({"model": "a", "prompt": "x", "n": 0}, 400, "n"),
        ({"model": "a", "prompt": "x", "stop": ["", "b"]}, 400, "stop"),
        ({"model": "a", "prompt": "x", "seed": "7"}, 400, "seed"),
        ({"model": "a", "prompt": "x", "stream": "yes"}, 400, "stream"),
        ({"model": "a", "prompt": "x", "num_beams": 999}, 400, "num_beams"),
        ({"model": "a", "prompt": "x", "num_beams": 2, "n": 2}, 400, "n"),
        ({"model": "a", "prompt": "x", "num_beams": 2, "temperature": 0.7}, 400, "temperature"),
        ({"model": "a", "prompt": "x", "echo": True}, 400, "echo"),
        ({"model": "a", "prompt": "x", "logprobs": 3}, 400, "logprobs"),
        ({"model": "a", "prompt": "x", "frobnicate": 1}, 400, "frobnicate"),
        ({"model": "a", "prompt": ""}, 400, "prompt"),
        ({"model": "a", "prompt": []}, 400, "prompt"),
        ({"model": "a", "prompt": [1, 2]}, 400, "prompt"),
        ({"model": "a"}, 400, "prompt"),
        ({"prompt": "x"}, 400, "model"),
        ({"model": 3, "prompt": "x"}, 400, "model"),
        ({"model": "zzz", "prompt": "x"}, 404, "model"),
        ({"model": "a", "prompt": "word " * 400}, 413, "prompt"),
        ({"model": "a", "prompt": ["x"] * 70, "max_tokens": 2}, 429, None),
    ],
)
def test_bad_requests_are_openai_errors_naming_the_field(server, body, status, param):
    response = post(server, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"] and "\n" not in error["message"]
    assert error["type"]


def test_malformed_bodies_keys_and_routes(server):
    for raw in (b"{not json", b"[1, 2]", b""):
        response = httpx.post(
            server.url + "/v1/completions",
            content=raw,
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            timeout=BOUND_S,
        )
        assert response.status_code == 400 and "error" in response.json()
    for key in (None, "wrong"):
        assert post(server, {"model": "a", "prompt": "x"}, key=key).status_code == 401
    try:
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError:
        pass
    assert httpx.get(server.url + "/health", timeout=BOUND_S).status_code == 200  # no key
    missing = httpx.get(server.url + "/v1/nothing", timeout=BOUND_S)
    assert missing.status_code == 404 and "error" in missing.json()


def test_prefixes_load_and_unload_without_a_restart(runs, server):
    api = client(server)
    assert (
        post(server, {"path": str(runs / "later" / "e")}, key=None, path="/v1/prefixes").status_code
        == 401
    )
    loaded = post(server, {"path": str(runs / "later" / "e")}, path="/v1/prefixes")
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["id"] == "e"
    want = offline(runs, [("e", SOURCES[1])], "--num-beams", "1", "--max-new-tokens", "6")[0]
    got = api.completions.create(model="e", prompt=SOURCES[1], max_tokens=6, temperature=0)
    assert got.choices[0].text == want
    again = post(server, {"path": str(runs / "later" / "e")}, path="/v1/prefixes")
    assert again.status_code == 409
    other = post(
        server, {"name": "llama", "path": str(runs / "other" / "llama")}, path="/v1/prefixes"
    )
    assert other.status_code == 400 and other.json()["error"]["param"] == "path"
    assert "one base model" in other.json()["error"]["message"]
    nothing = post(server, {"name": "x", "path": str(runs / "missing")}, path="/v1/prefixes")
    assert nothing.status_code == 400
    bad = post(server, {"name": "../x", "path": str(runs / "later" / "e")}, path="/v1/prefixes")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "name"
    headers = {"Authorization": f"Bearer {KEY}"}
    gone = httpx.delete(server.url + "/v1/prefixes/e", headers=headers, timeout=BOUND_S)
    assert gone.status_code == 200
    assert post(server, {"model": "e", "prompt": "x"}).status_code == 404
    twice = httpx.delete(server.url + "/v1/prefixes/e", headers=headers, timeout=BOUND_S)
    assert twice.status_code == 404
    assert httpx.delete(server.url + "/v1/prefixes/a", timeout=BOUND_S).status_code == 401


def _wait_idle(server) -> dict:
    deadline = time.monotonic() + BOUND_S
    while True:
        health = httpx.get(server.url + "/health", timeout=BOUND_S).json()
        if health["jobs"] == 0 and health["decoding"] == 0:
            return health
        assert time.monotonic() < deadline, health
        time.sleep(0.05)


def test_health_answers_while_generating_and_disconnects_free_rows(server):
    body = {"model": "a", "prompt": SOURCES[0], "max_tokens": 256, "temperature": 1.0, "seed": 1}
    long = threading.Thread(target=post, args=(server, {**body, "n": 8}))
    long.start()
    seen = {}
    deadline = time.monotonic() + BOUND_S
    while long.is_alive() and time.monotonic() < deadline:
        health = httpx.get(server.url + "/health", timeout=BOUND_S).json()
        if health["decoding"]:
            seen = health
            break
    assert seen.get("status") == "ok" and seen["decoding"] > 0  # answered mid-generation
    long.join(BOUND_S)
    _wait_idle(server)
    # a streaming client that goes away after its first chunk
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream(
        "POST",
        server.url + "/v1/completions",
        json={**body, "stream": True, "n": 4},
        headers=headers,
        timeout=BOUND_S,
    ) as response:
        assert response.status_code == 200
        next(response.iter_lines())
    _wait_idle(server)
    # a waiting client that gives up
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            server.url + "/v1/completions", json={**body, "n": 8}, headers=headers, timeout=0.5
        )
    _wait_idle(server)


def test_a_bounded_load_test_ends_on_its_own(server):
    """200 requests of mixed settings from 24 client threads: every one is answered (200, or
    429 when the queue is full), within a generous bound, and the server ends idle."""
    rng = random.Random(0)
    bodies = []
    for i in range(200):
        body = {
            "model": rng.choice("abcd"),
            "prompt": rng.choice(SOURCES),
            "max_tokens": rng.randint(1, 12),
        }
        kind = rng.random()
        if kind < 0.4:
            body["temperature"] = 0
        elif kind < 0.6:
            body["num_beams"] = 2
        else:
            body["seed"] = i
        if rng.random() < 0.2:
            body["stream"] = True
        bodies.append(body)
    start = time.monotonic()
    with ThreadPoolExecutor(24) as pool:
        codes = list(pool.map(lambda b: post(server, b).status_code, bodies))
    assert set(codes) <= {200, 429}
    assert codes.count(200) >= 100
    assert time.monotonic() - start < 10 * BOUND_S
    _wait_idle(server)


def test_graceful_shutdown_finishes_or_fails_in_flight_requests(runs):
    live = start(runs / "served", "--max-rows", "8")
    with live:
        results = []

        def ask(i):
            body = {"model": "abcd"[i % 4], "prompt": SOURCES[i % 6], "max_tokens": 64, "seed": i}
            try:
                results.append(post(live, body).status_code)
            except httpx.HTTPError:
                results.append("closed")

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + BOUND_S
        while httpx.get(live.url + "/health", timeout=BOUND_S).json()["decoding"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    for t in threads:
        t.join(BOUND_S)
    assert len(results) == 12
    assert set(results) <= {200, 503, "closed"} and 200 in results


def test_start_errors_are_one_line(runs, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name, where in (("a", "served/a"), ("llama", "other/llama")):
        (mixed / name).symlink_to(runs / where, target_is_directory=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, words in (
        (mixed, "one base model"),
        (empty, "has no prefix folder"),
        (tmp_path / "nowhere", "is not a folder"),
    ):
        with pytest.raises(SystemExit) as exit_:
            serve_main(["--prefixes", str(folder), "--port", "0"])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err
