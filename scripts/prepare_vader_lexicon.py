"""Ship the VADER sentiment lexicon (Hutto & Gilbert, 2014) as data/vader_lexicon/vader_lexicon.tsv.

    python scripts/prepare_vader_lexicon.py          # (re)writes the shipped file from the installed package
    python scripts/prepare_vader_lexicon.py --check  # exits 1 if the shipped file differs from the package's

Source: ``vader_lexicon.txt`` inside the PyPI package ``vaderSentiment==3.3.2`` (MIT licence, copied to
data/vader_lexicon/LICENSE.txt). Each line: token, mean valence (-4 .. +4), standard deviation, and the ten
individual human ratings (integers -4 .. +4) as a Python-style list. The preparation only normalises the
format: a header row, and the ratings written as ten tab-separated integers; tokens and numbers are unchanged.
Nothing is generated or relabelled. The capstone (notebook 11, :mod:`lorakit.capstone.lexicon`) reads this file.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "data" / "vader_lexicon" / "vader_lexicon.tsv"
HEADER = "token\tmean\tstd\t" + "\t".join(f"rating_{i}" for i in range(1, 11))


def package_lexicon() -> str:
    """The lexicon file of the installed vaderSentiment package, converted to the shipped TSV."""
    try:
        import vaderSentiment
    except ImportError:
        sys.exit("this script needs vaderSentiment (in lorakit's dev extra): pip install vaderSentiment==3.3.2")
    source = Path(vaderSentiment.__file__).with_name("vader_lexicon.txt")
    rows = [HEADER]
    for line in source.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        token, mean, std, ratings = line.split("\t")
        values = ast.literal_eval(ratings)
        if len(values) != 10 or not all(isinstance(v, int) and -4 <= v <= 4 for v in values):
            raise ValueError(f"unexpected ratings for {token!r}: {ratings}")
        rows.append("\t".join([token, mean, std, *map(str, values)]))
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    text = package_lexicon()
    if args.check:
        same = OUT.is_file() and OUT.read_text(encoding="utf-8") == text
        print("shipped lexicon matches the package" if same else f"{OUT} differs from the package's lexicon")
        return 0 if same else 1
    OUT.write_text(text, encoding="utf-8")
    print(f"{len(text.splitlines()) - 1} entries -> {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
