"""The capstone's data: 7,520 English words and emoticons, each rated for valence by ten people (notebook 11, §1).

The VADER lexicon (Hutto & Gilbert, 2014, ICWSM; MIT licence) ships in ``data/vader_lexicon/vader_lexicon.tsv``
(made by ``scripts/prepare_vader_lexicon.py`` from the ``vaderSentiment`` package). Each token carries ten
independent human ratings on -4 (extremely negative) .. +4 (extremely positive); the label is their mean,
recomputed from the ten ratings (the file's own mean column differs from it by more than 0.05 for one token,
:func:`published_mean_mismatches` counts it; the ceiling below is computed from the same ratings).

* :func:`load_lexicon`: the tokens, the ten ratings of each, their mean.
* :func:`lexicon_splits`: train / validation / test, a seeded permutation of the rows (fixed: seed 0). Fourteen
  tokens (emoticons and slang such as ``lol``, ``xd``, ``d:``) have two rows each, rated by separate panels: rows
  are split, not tokens, so one test token (of 1,504) also occurs in training, with its other ratings.
* :func:`human_ceiling`: how far the labels themselves can be trusted. Split the ten raters into two random
  halves of five and correlate the two half-panel means over the tokens (``r_half``); the Spearman-Brown
  formula gives the reliability of the full ten-rater mean, ``rho = 2 r_half / (1 + r_half)``, and no
  predictor, however good, can be expected to correlate with the noisy ten-rater mean better than
  ``sqrt(rho)`` (the noise ceiling; Spearman, 1910). Also: one rater against the mean of the other nine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["LEXICON_PATH", "Lexicon", "LexiconSplits", "human_ceiling", "lexicon_splits", "load_lexicon", "pearson",
           "published_mean_mismatches"]

LEXICON_PATH = Path(__file__).resolve().parents[2] / "data" / "vader_lexicon" / "vader_lexicon.tsv"
N_RATERS = 10


@dataclass(frozen=True)
class Lexicon:
    """``tokens[i]`` was rated ``ratings[i]`` (ten ints in -4..4) by ten people; ``mean[i]`` is the label."""

    tokens: tuple[str, ...]
    ratings: torch.Tensor  # [n, 10] float64
    mean: torch.Tensor  # [n] float64
    published_mean: torch.Tensor  # [n] float64, the file's own mean column

    def __len__(self) -> int:
        return len(self.tokens)

    def subset(self, index: torch.Tensor) -> Lexicon:
        idx = index.tolist()
        return Lexicon(tuple(self.tokens[i] for i in idx), self.ratings[index], self.mean[index],
                       self.published_mean[index])


@dataclass(frozen=True)
class LexiconSplits:
    train: Lexicon
    val: Lexicon
    test: Lexicon


def load_lexicon(path: str | Path | None = None) -> Lexicon:
    """Read the shipped TSV (or ``path``); ValueError on a malformed row, naming the line."""
    path = LEXICON_PATH if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `python scripts/prepare_vader_lexicon.py`")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].startswith("token\tmean\tstd"):
        raise ValueError(f"{path}: not the capstone's lexicon TSV (header {lines[:1]})")
    tokens, ratings, published = [], [], []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 3 + N_RATERS:
            raise ValueError(f"{path}:{number}: expected {3 + N_RATERS} tab-separated fields, got {len(fields)}")
        values = [int(v) for v in fields[3:]]
        if any(not -4 <= v <= 4 for v in values):
            raise ValueError(f"{path}:{number}: ratings must lie in -4..4, got {values}")
        published.append(float(fields[1]))
        tokens.append(fields[0])
        ratings.append(values)
    r = torch.tensor(ratings, dtype=torch.float64)
    return Lexicon(tuple(tokens), r, r.mean(1), torch.tensor(published, dtype=torch.float64))


def published_mean_mismatches(lexicon: Lexicon, tolerance: float = 0.05) -> int:
    """How many tokens' published mean differs from the mean of their ten ratings by more than ``tolerance``."""
    return int(((lexicon.published_mean - lexicon.mean).abs() > tolerance).sum())


def _check_fractions(fractions: object) -> tuple[float, float, float]:
    if (not isinstance(fractions, (tuple, list)) or len(fractions) != 3
            or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1 for f in fractions)
            or abs(sum(fractions) - 1) > 1e-9):
        raise ValueError(f"fractions must be three numbers in (0, 1) summing to 1, got {fractions!r}")
    return tuple(float(f) for f in fractions)  # type: ignore[return-value]


def lexicon_splits(lexicon: Lexicon | None = None, seed: int = 0,
                   fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> LexiconSplits:
    """Train / validation / test by a seeded permutation of the tokens (the capstone always uses seed 0)."""
    lexicon = load_lexicon() if lexicon is None else lexicon
    if not isinstance(lexicon, Lexicon):
        raise TypeError(f"lexicon must be a Lexicon, got {type(lexicon).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    f_train, f_val, _ = _check_fractions(fractions)
    order = torch.randperm(len(lexicon), generator=torch.Generator().manual_seed(seed))
    n_train, n_val = round(f_train * len(lexicon)), round(f_val * len(lexicon))
    return LexiconSplits(lexicon.subset(order[:n_train]), lexicon.subset(order[n_train:n_train + n_val]),
                         lexicon.subset(order[n_train + n_val:]))


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson's correlation of two 1-D tensors (float64)."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.shape != y.shape or x.dim() != 1:
        raise ValueError("x and y must be 1-D tensors of the same length")
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denominator = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    if denominator == 0:
        raise ValueError("pearson is undefined for a constant input")
    return float((x * y).sum()) / denominator


def human_ceiling(lexicon: Lexicon, n_splits: int = 100, seed: int = 0) -> dict[str, float]:
    """Split-half agreement of the raters, averaged over ``n_splits`` random 5/5 splits (module docstring).

    Returns ``r_half`` (mean over splits), ``r_half_spread`` (their standard deviation), ``reliability`` (the
    Spearman-Brown ``2 r / (1 + r)``), ``ceiling`` (``sqrt(reliability)``: the best correlation with the
    ten-rater mean a perfect predictor can expect), and ``one_vs_rest`` (one rater against the mean of the other
    nine, averaged over raters): what a single careful human scores.
    """
    if not isinstance(lexicon, Lexicon):
        raise TypeError(f"lexicon must be a Lexicon, got {type(lexicon).__name__}")
    if isinstance(n_splits, bool) or not isinstance(n_splits, int) or n_splits < 1:
        raise ValueError(f"n_splits must be an int >= 1, got {n_splits!r}")
    g = torch.Generator().manual_seed(seed)
    halves = []
    for _ in range(n_splits):
        perm = torch.randperm(N_RATERS, generator=g)
        halves.append(pearson(lexicon.ratings[:, perm[:5]].mean(1), lexicon.ratings[:, perm[5:]].mean(1)))
    r_half = sum(halves) / n_splits
    spread = math.sqrt(sum((h - r_half) ** 2 for h in halves) / max(n_splits - 1, 1))
    reliability = 2 * r_half / (1 + r_half)
    rest = [pearson(lexicon.ratings[:, i], torch.cat([lexicon.ratings[:, :i], lexicon.ratings[:, i + 1:]], 1).mean(1))
            for i in range(N_RATERS)]
    return {"r_half": r_half, "r_half_spread": spread, "reliability": reliability,
            "ceiling": math.sqrt(reliability), "one_vs_rest": sum(rest) / N_RATERS}
