"""XSum's extrapolation subsets (the paper's extrapolation experiments) from the release's URL
list: news -> sports and within-news topics. The list is synthetic here (../shared/data has
none), over the real ids of the local test sample."""

from __future__ import annotations

import json

import pytest
from conftest import DATA_ROOT, TINY, compose_cfg

from prefixtune.data import DataError, load_split
from prefixtune.data.xsum import read_sections
from prefixtune.errors import UsageError
from prefixtune.train import train

ARCHIVE = "http://web.archive.org/web/20150813012727/"
# (URL path before the id, the subsets the article is in)
KINDS = [
    ("http://www.bbc.com/news/world-africa-", {"news", "news-seen"}),
    ("http://www.bbc.co.uk/news/uk-england-", {"news", "news-seen"}),
    ("http://www.bbc.com/news/business-", {"news", "news-seen"}),
    ("http://www.bbc.com/news/health-", {"news", "news-unseen"}),
    ("http://www.bbc.com/news/science-environment-", {"news", "news-unseen"}),
    ("http://www.bbc.com/sport/0/football/", {"sports"}),
    ("http://www.bbc.co.uk/sport/cricket/", {"sports"}),
    ("http://www.bbc.com/culture/story/", set()),  # neither news nor sport
]


@pytest.fixture
def root(tmp_path):
    """A data root: the real XSum test sample (linked) and a URL list giving its articles
    the sections of KINDS in turn; the last article is left out of the list."""
    (tmp_path / "xsum").mkdir()
    sample = DATA_ROOT / "xsum" / "frank_xsum_test.jsonl"
    (tmp_path / "xsum" / sample.name).symlink_to(sample)
    ids = [json.loads(line)["id"] for line in sample.read_text().splitlines() if line.strip()]
    lines = ["", "not a url"]
    expected = {s: [] for s in ("news", "sports", "news-seen", "news-unseen")}
    for i, ident in enumerate(ids[:-1]):
        path, subsets = KINDS[i % len(KINDS)]
        lines.append(f"{ARCHIVE}{path}{ident}")
        for s in subsets:
            expected[s].append(ident)
    (tmp_path / "xsum" / "XSum-WebArxiveUrls.txt").write_text("\n".join(lines) + "\n")
    return tmp_path, expected


def test_sections_come_from_the_url_paths(root):
    folder, _ = root
    sections = read_sections(folder / "xsum" / "XSum-WebArxiveUrls.txt")
    assert set(sections.values()) == {
        ("news", "world"),
        ("news", "uk"),
        ("news", "business"),
        ("news", "health"),
        ("news", "science"),
        ("sport", "football"),
        ("sport", "cricket"),
        ("culture", "story"),
    }


@pytest.mark.parametrize("subset", ["news", "sports", "news-seen", "news-unseen"])
def test_each_subset_keeps_exactly_its_articles_in_order(root, subset):
    folder, expected = root
    examples = load_split("xsum", "test", folder, subset=subset)
    assert [e.meta["id"] for e in examples] == expected[subset]
    assert expected[subset]  # the synthetic list puts articles in every subset


def test_subsets_split_news_in_two(root):
    folder, expected = root
    assert sorted(expected["news-seen"] + expected["news-unseen"]) == sorted(expected["news"])
    assert not set(expected["news"]) & set(expected["sports"])


def test_missing_url_list_is_one_line_naming_it(tmp_path):
    with pytest.raises(DataError) as err:
        load_split("xsum", "test", tmp_path, subset="sports")
    assert "XSum-WebArxiveUrls.txt" in str(err.value) and "\n" not in str(err.value)


def test_unknown_subset_lists_the_valid_ones():
    with pytest.raises(DataError, match="news-unseen"):
        load_split("xsum", "test", DATA_ROOT, subset="politics")


@pytest.mark.parametrize("split", ["news_to_sports", "within_news"])
def test_the_presets_compose_and_fail_offline_at_the_url_list(split, tmp_path):
    overrides = [*TINY, "task=xsum", "model=tiny-bart", f"xsum_split={split}"]
    overrides = [o for o in overrides if not o.startswith("data.root")]
    overrides.append(f"data.root={tmp_path}")
    cfg = compose_cfg(overrides, tmp_path / "run")
    assert (cfg.task.subset, cfg.task.eval_subset) in {
        ("news", "sports"),
        ("news-seen", "news-unseen"),
    }
    with pytest.raises(UsageError, match="XSum-WebArxiveUrls.txt"):
        train(cfg, overrides)
