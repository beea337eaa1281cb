"""prefixtune-serve on the real SmolLM2-135M with two text-initialised prefixes (saved with the
engine's save_prefix): concurrent greedy, beam and streamed requests through the openai client,
each equal to prefixtune-generate's output."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from test_serve import BOUND_S, KEY, LiveServer, offline_from

from prefixtune.config import model_preset
from prefixtune.models import load_model
from prefixtune.prefix import PrefixConfig, PrefixModel
from prefixtune.serve.app import create_app
from prefixtune.serve.cli import build_engine, build_parser

TEXTS = {
    "e2e": "Describe the restaurant in one sentence:",
    "story": "Once upon a time, in a small village,",
}
SOURCES = [
    "name : The Eagle | eatType : coffee shop | food : French | area : riverside",
    "name : Zizzi | food : Italian | priceRange : cheap",
    "name : Blue Spice | area : city centre | familyFriendly : yes",
    "name : Cotto | near : The Bakers",
]


@pytest.fixture(scope="module")
def prefixes(tmp_path_factory):
    root = tmp_path_factory.mktemp("smol")
    base, tok = load_model(model_preset("smollm2-135m"))
    for name, text in TEXTS.items():
        config = PrefixConfig(length=10, reparam=False, init="text", init_text=text)
        model = PrefixModel(base, config, tokenizer=tok)
        model.save_prefix(root / "served" / name)
        model.unwrap()
    return root


def test_smollm2_mixed_prefix_requests_equal_prefixtune_generate(prefixes):
    served = prefixes / "served"
    jobs = [(name, source) for name in TEXTS for source in SOURCES]  # 8 requests
    folders = {name: served / name for name in TEXTS}
    greedy = offline_from(prefixes, folders, jobs, "--num-beams", "1", "--max-new-tokens", "16")
    beam = offline_from(prefixes, folders, jobs, "--num-beams", "3", "--max-new-tokens", "12")
    assert len(set(greedy)) > 1 and greedy[:4] != greedy[4:]  # the prefixes differ
    engine = build_engine(build_parser().parse_args(["--prefixes", str(served)]))
    with LiveServer(create_app(engine, KEY)) as live:
        api = openai.OpenAI(base_url=f"{live.url}/v1", api_key=KEY, max_retries=0, timeout=BOUND_S)

        def ask(i):
            name, source = jobs[i % 8]
            if i < 8:
                out = api.completions.create(
                    model=name, prompt=source, max_tokens=16, temperature=0
                )
            else:
                out = api.completions.create(
                    model=name, prompt=source, max_tokens=12, extra_body={"num_beams": 3}
                )
            return out.choices[0].text

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, range(16)))
        assert answers[:8] == greedy
        assert answers[8:] == beam
        streamed = api.completions.create(
            model="story", prompt=SOURCES[1], max_tokens=16, temperature=0, stream=True
        )
        assert "".join(c.choices[0].text for c in streamed) == greedy[5]
