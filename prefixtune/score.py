"""``prefixtune-score``: score generated outputs with the official scorer of their dataset."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NoReturn

from prefixtune.metrics import TASKS, ScoreError, score_with_stats
from prefixtune.metrics.nist import NIST_MODES
from prefixtune.metrics.stats import write_stats

SPLITS = ("dev", "test")

DESCRIPTION = """\
Score outputs (one per line, in dataset order) with the official scorer the paper used:
  e2e     E2E challenge scorer: BLEU, NIST (mteval-13a tokens, lower-cased; its Python mode,
          --nist-mode perl for its Perl mode's NIST), METEOR, ROUGE-L, CIDEr (COCO caption
          code on PTB tokens)
  webnlg  WebNLG 2017 challenge scorer: BLEU, METEOR, TER over all / seen / unseen categories
  dart    DART scorer: BLEU (multi-bleu, cased), METEOR, TER
  xsum    rouge-score with stemming: rouge1, rouge2, rougeL, rougeLsum
The last line of stdout is one JSON object.  Scales: BLEU 0-100 (the E2E scorer prints 0-1:
72.03 here is its 0.7203); METEOR, TER and E2E ROUGE-L 0-1; NIST and CIDEr unbounded; XSum
ROUGE F-measures 0-100 (mean over summaries).  WebNLG seen/unseen are null without seen flags.

Files are UTF-8 (a byte-order mark and CRLF line ends are accepted); a byte that is not UTF-8
is an error naming the file and line.  An empty output line is scored as an empty output
(it matches nothing, length 0) and counted in a warning on stderr.  METEOR and the PTB
tokenizer need Java (default-jre-headless)."""

REFS_HELP = """reference file(s).  e2e and webnlg: ONE file, the E2E challenge format: the
references of an input one per line, a blank line between inputs.  dart and xsum: one file per
reference, aligned line by line with --hyps (give --refs several times); a blank line is a
missing reference (kept as an empty reference for dart BLEU, as the DART scorer does)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="prefixtune-score",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--hyps", required=True, type=Path, help="outputs, one per line")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--refs", type=Path, action="append", help=REFS_HELP)
    source.add_argument(
        "--split",
        choices=SPLITS,
        help="score against this split of --data-root (prefixtune.data.load_split); dart test "
        "uses the DART scorer's ref_all-delex-reference{0,1,2}.lex files",
    )
    parser.add_argument(
        "--data-root", type=Path, default=None, help="dataset folder (default: the project's)"
    )
    parser.add_argument(
        "--allow-modified",
        action="store_true",
        help="with --split: accept release files that differ from the official ones",
    )
    parser.add_argument(
        "--nist-mode",
        choices=NIST_MODES,
        default="python",
        help="e2e NIST: 'python' (default) the E2E scorer's -p mode, as the paper reports it; "
        "'perl' its default mode (mteval-v13a-sig.pl, the challenge leaderboard's numbers), "
        "whose length penalty differs (e.g. 8.11 vs 7.97 NIST)",
    )
    parser.add_argument(
        "--seen-flags",
        type=Path,
        default=None,
        help="webnlg with --refs: one line per input, 'seen' or 'unseen' (also 1/0, true/false)",
    )
    parser.add_argument(
        "--stats",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the per-input metric statistics to FILE (JSON; must not exist), what "
        "prefixtune-collect's significance tests read (a run folder's stats_<split>.json)",
    )
    return parser


def read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file without their line ends (LF or CRLF); one final end dropped."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ScoreError(f"cannot read {path}: {err.strerror or err}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    raw = data.split(b"\n")
    if raw and raw[-1] == b"":
        raw.pop()
    lines = []
    for number, line in enumerate(raw, start=1):
        try:
            lines.append(line.removesuffix(b"\r").decode("utf-8"))
        except UnicodeDecodeError as err:
            raise ScoreError(
                f"{path}: line {number} is not valid UTF-8 "
                f"(byte 0x{line[err.start]:02x} at column {err.start + 1})"
            ) from None
    return lines


def read_grouped(path: Path) -> list[list[str]]:
    """E2E challenge reference format: blank lines separate the inputs' reference groups."""
    groups: list[list[str]] = [[]]
    for line in read_lines(path):
        if line.strip():
            groups[-1].append(line.strip())
        elif groups[-1]:
            groups.append([])
    return [g for g in groups if g]


def read_aligned(paths: list[Path], n_hyps: int) -> list[list[str]]:
    columns = [read_lines(p) for p in paths]
    for path, col in zip(paths, columns, strict=True):
        if len(col) != n_hyps:
            raise ScoreError(f"{path} has {len(col)} lines but the outputs file has {n_hyps}")
    return [[col[i].strip() for col in columns] for i in range(n_hyps)]


def read_seen_flags(path: Path) -> list[bool]:
    words = {"seen": True, "1": True, "true": True, "unseen": False, "0": False, "false": False}
    flags = []
    for number, line in enumerate(read_lines(path), start=1):
        key = line.strip().lower()
        if key not in words:
            raise ScoreError(f"{path}: line {number}: expected seen or unseen, got {line!r}")
        flags.append(words[key])
    return flags


def _dart_official_refs(root: Path, split: str, n_inputs: int) -> list[list[str]] | None:
    """The DART scorer's own reference files (lower-cased, tokenized, blank = missing), if any.

    The official DART scores are computed against ``ref_all-delex-reference{0,1,2}.lex``, not the
    raw XML texts; they exist for the test split only.  Elsewhere the first three texts of each
    entry are used, a missing one as a blank reference, as those files have it.
    """
    from prefixtune.data.dart import FOLDER, REFERENCE_FILES

    paths = [Path(root) / FOLDER / name for name in REFERENCE_FILES]
    if split != "test" or not all(p.is_file() for p in paths):
        return None
    return read_aligned(paths, n_inputs)


def load_references(args: argparse.Namespace, n_hyps: int):
    """(references per input, seen flags or None) from --refs or --split."""
    if args.split is not None:
        try:  # imported here: the scorer must work without the data package
            from prefixtune.data import DataError, default_data_root, load_split
        except ImportError as err:
            why = f"--split needs prefixtune.data, which failed to import: {err}"
            raise ScoreError(why) from None
        root = args.data_root if args.data_root is not None else default_data_root()
        try:
            examples = load_split(args.task, args.split, root, allow_modified=args.allow_modified)
        except DataError as err:
            # The data package names train.py's options; here they are this command's flags.
            message = (
                str(err)
                .replace("data.root=", "--data-root")
                .replace("data.allow_modified=true", "--allow-modified")
            )
            raise ScoreError(message or "data error") from None
        refs = [list(ex.references) for ex in examples]
        if args.task == "dart":
            refs = _dart_official_refs(root, args.split, len(examples)) or [
                (r[:3] + [""] * 3)[:3] for r in refs
            ]
        seen = [bool(ex.meta["seen"]) for ex in examples] if args.task == "webnlg" else None
        return refs, seen
    if args.task in ("e2e", "webnlg"):
        if len(args.refs) != 1:
            raise ScoreError(f"{args.task} takes one --refs file (blank line between inputs)")
        refs = read_grouped(args.refs[0])
    else:
        refs = read_aligned(args.refs, n_hyps)
    seen = read_seen_flags(args.seen_flags) if args.seen_flags is not None else None
    return refs, seen


def run(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.seen_flags is not None and args.task != "webnlg":
        raise ScoreError("--seen-flags only applies to --task webnlg")
    if args.nist_mode != "python" and args.task != "e2e":
        raise ScoreError("--nist-mode only applies to --task e2e")
    if args.stats is not None and args.stats.exists():
        raise ScoreError(f"--stats {args.stats} already exists; refusing to overwrite it")
    hyps = read_lines(args.hyps)
    refs, seen = load_references(args, len(hyps))
    if len(hyps) != len(refs):
        where = f"{args.split} split" if args.split else ", ".join(map(str, args.refs))
        raise ScoreError(f"{args.hyps} has {len(hyps)} lines but {where} has {len(refs)} inputs")
    if seen is not None and len(seen) != len(hyps):
        raise ScoreError(f"{args.seen_flags} has {len(seen)} lines but {len(hyps)} outputs")
    empty = [i + 1 for i, h in enumerate(hyps) if not h.strip()]
    if empty:
        print(
            f"warning: {len(empty)} empty output line(s) in {args.hyps} (first: line "
            f"{empty[0]}) scored as empty outputs",
            file=sys.stderr,
        )
    scores, stats = score_with_stats(args.task, hyps, refs, seen=seen, nist_mode=args.nist_mode)
    if args.stats is not None:
        write_stats(args.stats, stats)
    return scores


def main(argv: list[str] | None = None) -> int:
    try:
        result = run(argv)
    except ScoreError as err:
        print(f"prefixtune-score: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
