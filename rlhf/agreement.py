"""How much annotators agree, and exporting a store as a pairs file.

`photographer agreement --store prefs.sqlite` prints, for every two annotators, the pairs both
answered, their percent agreement and Cohen's kappa (chance-corrected, over the three answers
0/1/2), and the same restricted to "decisive" pairs where both chose A or B; then, over pairs
answered by two or more annotators, the mean per-pair agreement and (with three or more
annotators) Fleiss' kappa. Each annotator's current answer counts (see rlhf.store).

`photographer export --store prefs.sqlite --out pairs.json [--annotator NAME]` writes the shared
pairs format; ``preference`` is that annotator's answer or the consensus, and ``annotations``
lists every answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from rlhf.pairs import CHOICES, PairsFormatError, load_pairs
from rlhf.store import Answer, PreferenceStore, StoreError, consensus, is_store_file


@dataclass(frozen=True)
class PairwiseAgreement:
    """Two annotators over the pairs both answered. None where a value is undefined."""

    annotator_a: str
    annotator_b: str
    n: int
    agreement: float | None
    kappa: float | None
    decisive_n: int
    decisive_agreement: float | None


@dataclass(frozen=True)
class PairAgreement:
    """One pair answered by two or more annotators: share of annotator pairs that agree on it."""

    pair_id: str
    choices: dict[str, int]
    agreement: float
    consensus: int


@dataclass
class AgreementReport:
    annotators: list[str]
    n_pairs: int | None
    pairwise: list[PairwiseAgreement]
    per_pair: list[PairAgreement]
    mean_pair_agreement: float | None
    fleiss_kappa: float | None
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def table(self, per_pair: bool = False) -> str:
        return format_report(self, per_pair)


def percent_agreement(a: Sequence[int], b: Sequence[int]) -> float | None:
    """Share of positions where a and b agree (None for no positions)."""
    if len(a) != len(b):
        raise ValueError(f"rating lists differ in length: {len(a)} vs {len(b)}")
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a) if a else None


def cohen_kappa(a: Sequence[int], b: Sequence[int], categories: Sequence[int] = CHOICES) -> float | None:
    """Cohen's kappa (po - pe) / (1 - pe); None when undefined (no ratings, or pe = 1)."""
    po = percent_agreement(a, b)
    if po is None:
        return None
    n = len(a)
    ca, cb = Counter(a), Counter(b)
    pe = sum(ca[k] * cb[k] for k in categories) / (n * n)
    if pe >= 1.0:
        return None  # both always gave one same answer: chance explains everything
    return (po - pe) / (1.0 - pe)


def fleiss_kappa(items: Iterable[Sequence[int]], categories: Sequence[int] = CHOICES) -> float | None:
    """Fleiss' kappa over items rated by 2+ raters (rater counts may differ between items).

    P_i = sum_j n_ij (n_ij - 1) / (n_i (n_i - 1)); P = mean P_i; p_j = share of all ratings in
    category j; Pe = sum p_j^2; kappa = (P - Pe) / (1 - Pe). None when undefined.
    """
    per_item, totals, n_all = [], Counter(), 0
    for ratings in items:
        if len(ratings) < 2:
            continue
        c = Counter(ratings)
        n = len(ratings)
        per_item.append(sum(v * (v - 1) for v in c.values()) / (n * (n - 1)))
        totals.update(c)
        n_all += n
    if not per_item:
        return None
    p_bar = sum(per_item) / len(per_item)
    pe = sum((totals[k] / n_all) ** 2 for k in categories)
    if pe >= 1.0:
        return None
    return (p_bar - pe) / (1.0 - pe)


def compute_agreement(answers: Iterable[Answer], annotators: Sequence[str] | None = None,
                      n_pairs: int | None = None, source: str = "") -> AgreementReport:
    """Agreement from current answers (one per pair and annotator; a later one replaces an earlier)."""
    latest: dict[str, dict[str, Answer]] = {}
    for a in answers:
        cur = latest.setdefault(a.pair_id, {}).get(a.annotator)
        if cur is None or a.timestamp >= cur.timestamp:
            latest[a.pair_id][a.annotator] = a
    names = sorted({w for by in latest.values() for w in by}) if annotators is None else list(annotators)
    keep = set(names)
    choices = {pid: {w: a.choice for w, a in by.items() if w in keep} for pid, by in latest.items()}

    pairwise = []
    for x, y in combinations(names, 2):
        both = [(c[x], c[y]) for c in choices.values() if x in c and y in c]
        ax, ay = [p[0] for p in both], [p[1] for p in both]
        decisive = [(u, v) for u, v in both if u and v]
        pairwise.append(PairwiseAgreement(
            x, y, len(both), percent_agreement(ax, ay), cohen_kappa(ax, ay), len(decisive),
            percent_agreement([u for u, _ in decisive], [v for _, v in decisive])))

    per_pair = []
    for pid, c in choices.items():
        if len(c) < 2:
            continue
        votes = list(c.values())
        agree = sum(u == v for u, v in combinations(votes, 2)) / (len(votes) * (len(votes) - 1) / 2)
        per_pair.append(PairAgreement(pid, dict(sorted(c.items())), agree, consensus(votes)))
    mean = sum(p.agreement for p in per_pair) / len(per_pair) if per_pair else None
    fleiss = fleiss_kappa(list(p.choices.values()) for p in per_pair) if len(names) > 2 else None
    return AgreementReport(names, n_pairs, pairwise, per_pair, mean, fleiss, source)


def store_agreement(store: PreferenceStore, annotators: Sequence[str] | None = None) -> AgreementReport:
    return compute_agreement(store.answers(), annotators, len(store), str(store.path))


def answers_from_pairs_file(path: str | Path) -> tuple[list[Answer], int]:
    """The ``annotations`` of an exported pairs file as answers, and the number of pairs."""
    pairs = load_pairs(path)
    out = []
    for i, p in enumerate(pairs):
        notes = p.extra.get("annotations", [])
        if not isinstance(notes, list):
            raise PairsFormatError(path, "must be a list of answers", i, p.id, "annotations")
        for j, n in enumerate(notes):
            try:
                out.append(Answer(p.id, str(n["annotator"]), int(n["choice"]), n.get("seconds"),
                                  float(n.get("timestamp", 0.0))))
            except (KeyError, TypeError, ValueError) as e:
                raise PairsFormatError(path, f"answer #{j} is malformed ({e}): {n!r}", i, p.id,
                                       "annotations") from e
    return out, len(pairs)


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def format_report(report: AgreementReport, per_pair: bool = False) -> str:
    """The report as a plain-text table."""
    head = f"Agreement in {report.source or 'the answers'}"
    if report.n_pairs is not None:
        head += f" ({report.n_pairs} pairs)"
    lines = [head, "annotators: " + (", ".join(report.annotators) or "none")]
    if any(a.startswith("simulated:") for a in report.annotators):
        lines.append("(names starting with 'simulated:' are SIMULATED annotators, not people)")
    if not report.pairwise:
        lines.append("fewer than two annotators: nothing to compare")
        return "\n".join(lines)
    w = max(11, *(len(n) for n in report.annotators))
    cols = f"{'annotator A':<{w}}  {'annotator B':<{w}}  {'pairs':>5}  {'agree':>6}  {'kappa':>6}  " \
           f"{'decisive':>8}  {'agree':>6}"
    lines += ["", cols, "-" * len(cols)]
    for p in report.pairwise:
        lines.append(f"{p.annotator_a:<{w}}  {p.annotator_b:<{w}}  {p.n:>5}  {_fmt(p.agreement, True):>6}  "
                     f"{_fmt(p.kappa):>6}  {p.decisive_n:>8}  {_fmt(p.decisive_agreement, True):>6}")
    lines += ["", "kappa: Cohen's, over answers 0/1/2; decisive: pairs where both chose A or B",
              f"pairs answered by 2+ annotators: {len(report.per_pair)}; mean per-pair agreement "
              f"{_fmt(report.mean_pair_agreement, True)}"
              + (f"; Fleiss' kappa {_fmt(report.fleiss_kappa)}" if len(report.annotators) > 2 else "")]
    if per_pair and report.per_pair:
        lines += ["", f"{'pair':<20}  {'agree':>6}  consensus  answers"]
        for p in report.per_pair:
            answers = ", ".join(f"{k}={v}" for k, v in p.choices.items())
            lines.append(f"{p.pair_id:<20}  {_fmt(p.agreement, True):>6}  {p.consensus:>9}  {answers}")
    return "\n".join(lines)


@dataclass
class AgreementConfig:
    """Agreement (percent, Cohen's kappa, Fleiss' kappa) between the annotators of a store."""

    store: str = field(default="", metadata={
        "help": "preference store (.sqlite), or a pairs JSON exported with its 'annotations'"})
    annotators: list[str] | None = field(default=None, metadata={
        "help": "compare only these annotators (default: everyone who answered)"})
    per_pair: bool = field(default=False, metadata={"help": "also list every pair answered by 2+ annotators"})
    json: bool = field(default=False, metadata={"help": "print the report as JSON instead of a table"})

    def __post_init__(self) -> None:
        if not self.store:
            raise ValueError("--store is required")


@dataclass
class ExportConfig:
    """Export a store's pairs and answers as a pairs JSON file (the shared format)."""

    store: str = field(default="", metadata={"help": "preference store (.sqlite) to export"})
    out: str = field(default="", metadata={"help": "pairs JSON file to write (atomically)"})
    annotator: str | None = field(default=None, metadata={
        "help": "whose answers fill 'preference' (default: the consensus of everyone)"})

    def __post_init__(self) -> None:
        if not self.store or not self.out:
            raise ValueError("--store and --out are required")


def _parse(cls: type, argv: list[str] | None, prog: str) -> Any:
    from rlhf.config import add_dataclass_arguments, config_from_args

    parser = argparse.ArgumentParser(prog=prog, description=(cls.__doc__ or "").strip())
    add_dataclass_arguments(parser, cls)
    return config_from_args(cls, parser.parse_args(argv))


def _existing_store(path: str) -> PreferenceStore:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such store")
    return PreferenceStore(path)


def main(argv: list[str] | None = None) -> int:
    """`photographer agreement --store STORE`. Bad input raises ValueError/FileNotFoundError
    naming the file (the `photographer` command prints it as one line)."""
    cfg = _parse(AgreementConfig, argv, "photographer agreement")
    if Path(cfg.store).is_file() and not is_store_file(cfg.store):
        answers, n = answers_from_pairs_file(cfg.store)
        report = compute_agreement(answers, cfg.annotators, n, str(Path(cfg.store).resolve()))
    else:
        report = store_agreement(_existing_store(cfg.store), cfg.annotators)
    if cfg.annotators:
        alone = [a for a in report.annotators
                 if not any(a in (p.annotator_a, p.annotator_b) and p.n for p in report.pairwise)]
        if alone:
            print(f"note: no pairs shared with anyone for {', '.join(alone)}", file=sys.stderr)
    print(json.dumps(report.to_json(), indent=1) if cfg.json else report.table(cfg.per_pair))
    return 0


def export_main(argv: list[str] | None = None) -> int:
    """`photographer export --store STORE --out pairs.json [--annotator NAME]`."""
    cfg = _parse(ExportConfig, argv, "photographer export")
    store = _existing_store(cfg.store)
    if cfg.annotator is not None and cfg.annotator not in store.annotators():
        raise StoreError(f"{store.path}: no answers by {cfg.annotator!r}; annotators: "
                         f"{', '.join(store.annotators()) or 'none'}")
    path = store.export_json(cfg.out, annotator=cfg.annotator)
    done = len(store.pairs(answered=True, annotator=cfg.annotator))
    whose = f"answered by {cfg.annotator}" if cfg.annotator else "answered by anyone"
    print(f"exported {len(store)} pairs ({done} {whose}) to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
