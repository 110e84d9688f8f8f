"""From run records to tables: the metric of a run, mean ± std over seeds, markdown, plots.

A cell of a table aggregates the runs that share its row and column labels (the seeds): the mean and the
sample standard deviation (``n - 1`` in the denominator; 0 for a single run) of the metric, in percent.
GLUE reports the best dev evaluation of a run (``best``, the paper's protocol); ``final`` is the last one.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Record = dict[str, Any]


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation of ``n`` values."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        if not values:
            raise ValueError("Stat.of needs at least one value")
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))

    def format(self, digits: int = 1, sign: str = "") -> str:
        """``mean ± std``; a single run has no spread to show, just its value. ``sign="+"`` signs the mean (for
        differences)."""
        if self.n == 1:
            return f"{self.mean:{sign}.{digits}f}"
        return f"{self.mean:{sign}.{digits}f} ± {self.std:.{digits}f}"


def metric(record: Record, which: str = "best", name: str | None = None, scale: float = 100.0) -> float:
    """The run's ``name`` metric (default: its task's main metric) at its ``best`` or ``final`` evaluation,
    times ``scale`` (percent by default)."""
    run = record["run"]
    return scale * float(run[which]["metrics"][name or run["main_metric"]])


def label(record: Record, key: str) -> Any:
    return record["labels"][key]


def group(records: Sequence[Record], keys: Sequence[str]) -> dict[tuple, list[Record]]:
    """Records grouped by the values of their ``keys`` labels, in first-seen order."""
    groups: dict[tuple, list[Record]] = defaultdict(list)
    for record in records:
        groups[tuple(label(record, key) for key in keys)].append(record)
    return dict(groups)


def cells(records: Sequence[Record], row: str, column: str, value: Callable[[Record], float]) -> dict[tuple, Stat]:
    """``{(row label, column label): Stat}`` of ``value`` over the runs of each cell."""
    return {key: Stat.of([value(r) for r in runs]) for key, runs in group(records, (row, column)).items()}


def row_average(records: Sequence[Record], row: str, column: str, columns: Sequence[Any], by: str,
                value: Callable[[Record], float]) -> dict[Any, Stat]:
    """Per row, the mean over ``columns`` of ``value``, computed per ``by`` (the seed), then mean ± std over those.

    A row is averaged only over the ``by`` values that have a run in every column (an unfinished seed is left
    out rather than averaged over fewer tasks). No ``columns``: no averages.
    """
    averages: dict[Any, Stat] = {}
    if not columns:
        return averages
    for (row_value,), runs in group(records, (row,)).items():
        per_seed = group(runs, (by,))
        complete = [[value(next(r for r in seed_runs if label(r, column) == c)) for c in columns]
                    for seed_runs in per_seed.values()
                    if {label(r, column) for r in seed_runs} >= set(columns)]
        if complete:
            averages[row_value] = Stat.of([statistics.fmean(values) for values in complete])
    return averages


def matched_ratio(records: Sequence[Record], row: str, reference: Any, match: Sequence[str],
                  value: Callable[[Record], float]) -> dict[Any, float]:
    """Per row, the median of ``value`` divided by the ``reference`` row's ``value`` for the same ``match``
    labels (the same task and seed) on the same machine (CPU model), over the pairs both rows have: a ratio of two
    machines' times would measure the machines."""
    measured = {(*key, runs[0]["machine"]["cpu"]): value(runs[0])
                for key, runs in group(records, (row, *match)).items()}
    ratios: dict[Any, list[float]] = defaultdict(list)
    for (row_value, *key), run_value in measured.items():
        if (reference, *key) in measured:
            ratios[row_value].append(run_value / measured[(reference, *key)])
    return {row_value: statistics.median(values) for row_value, values in ratios.items()}


def paired_differences(records: Sequence[Record], row: str, reference: Any, by: str,
                       value: Callable[[Record], float]) -> dict[Any, dict[Any, float]]:
    """Per row, ``{by label: value - the reference row's value with the same by label}`` (the paired difference per
    seed), over the ``by`` labels both rows have."""
    measured = {key: value(runs[0]) for key, runs in group(records, (row, by)).items()}
    differences: dict[Any, dict[Any, float]] = defaultdict(dict)
    for (row_value, by_value), run_value in measured.items():
        if row_value != reference and (reference, by_value) in measured:
            differences[row_value][by_value] = run_value - measured[(reference, by_value)]
    return dict(differences)


def paired_table(differences: dict[Any, dict[Any, float]], rows: Sequence[Any], seeds: Sequence[Any], row_title: str,
                 digits: int = 2) -> str:
    """``paired_differences`` as markdown: one column per seed, then mean ± std over the seeds a row has."""
    body = []
    for r in rows:
        if r not in differences:
            continue
        per_seed = differences[r]
        cells = [f"{per_seed[s]:+.{digits}f}" if s in per_seed else "—" for s in seeds]
        body.append([str(r), *cells, Stat.of(list(per_seed.values())).format(digits, sign="+")])
    return markdown_table([row_title, *(f"seed {s}" for s in seeds), "mean ± std"], body)


def seeds_of(records: Sequence[Record]) -> str:
    """The seeds the records cover, as text (``0, 1, 2``; a table names only the seeds that have finished runs)."""
    return ", ".join(map(str, sorted({label(r, "seed") for r in records})))


def concurrency(records: Sequence[Record], default: int = 2) -> str:
    """How many runs trained at once, from the ``--jobs`` of each record's command (``1 / 2 / 3`` when mixed)."""
    jobs = {int(match.group(1)) if (match := re.search(r"--jobs[ =](\d+)", r["command"])) else default
            for r in records}
    return " / ".join(map(str, sorted(jobs)))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def stat_table(stats: dict[tuple, Stat], rows: Sequence[Any], columns: Sequence[Any], row_title: str,
               column_names: Callable[[Any], str] = str, extra: dict[str, dict[Any, str]] | None = None,
               bold_best: bool = True, digits: int = 1) -> str:
    """A markdown table of ``mean ± std`` cells (``—`` where no run finished), the best mean of each column in
    bold, then the ``extra`` columns (``{title: {row: text}}``)."""
    extra = extra or {}
    best = {c: max((stats[(r, c)].mean for r in rows if (r, c) in stats), default=None) for c in columns}
    body = []
    for r in rows:
        line = [str(r)]
        for c in columns:
            stat = stats.get((r, c))
            text = "—" if stat is None else stat.format(digits)
            line.append(f"**{text}**" if bold_best and stat is not None and stat.mean == best[c] else text)
        line += [values.get(r, "—") for values in extra.values()]
        body.append(line)
    return markdown_table([row_title, *map(column_names, columns), *extra], body)


def beaten_by(stats: dict[tuple, Stat], reference: Any, rows: Sequence[Any], columns: Sequence[Any]
              ) -> dict[Any, list[Any]]:
    """Per column, the rows whose mean is higher than the ``reference`` row's (where both have runs)."""
    return {c: [r for r in rows if r != reference and (r, c) in stats and (reference, c) in stats
                and stats[(r, c)].mean > stats[(reference, c)].mean] for c in columns}


def bar_plot(stats: dict[tuple, Stat], rows: Sequence[Any], columns: Sequence[Any], path: Path, title: str,
             ylabel: str) -> Path:
    """Grouped bars (one group per column, one bar per row) with ±std error bars."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(6.0, 1.6 * len(columns) + 2), 4.5), layout="constrained")
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j, c in enumerate(columns) if (r, c) in stats]
        present = [c for c in columns if (r, c) in stats]
        axis.bar(xs, [stats[(r, c)].mean for c in present], width, yerr=[stats[(r, c)].std for c in present],
                 label=str(r), capsize=2)
    axis.set_xticks(range(len(columns)), [str(c) for c in columns])
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend(fontsize="small", ncols=min(len(rows), 4))
    return _save(figure, path)


def line_plot(stats: dict[tuple, Stat], rows: Sequence[Any], xs: Sequence[Any], path: Path, title: str,
              xlabel: str, ylabel: str) -> Path:
    """One line per row over ``xs`` (log2 axis), mean with a ±std band."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.5), layout="constrained")
    for r in rows:
        present = [x for x in xs if (r, x) in stats]
        means = [stats[(r, x)].mean for x in present]
        stds = [stats[(r, x)].std for x in present]
        axis.plot(present, means, marker="o", label=str(r))
        axis.fill_between(present, [m - s for m, s in zip(means, stds, strict=True)],
                          [m + s for m, s in zip(means, stds, strict=True)], alpha=0.15)
    axis.set_xscale("log", base=2)
    axis.set_xticks(list(xs), [str(x) for x in xs])
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend(fontsize="small")
    return _save(figure, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    _pyplot().close(figure)
    return path


def machine_line(records: Sequence[Record]) -> str:
    """Where and with what the runs ran, then which code (`code_note`). Runs on different machines or packages list
    each one with how many runs it holds, oldest first; none is left out for the latest."""
    counts = Counter(_machine(record) for record in sorted(records, key=lambda r: r["machine"]["date"]))
    if len(counts) == 1:
        return f"{next(iter(counts))}. {code_note(records)}"
    each = "; ".join(f"{machine} ({n} run{'s' if n > 1 else ''})" for machine, n in counts.items())
    return f"the runs differ in machine or packages: {each}. {code_note(records)}"


def _machine(record: Record) -> str:
    """The machine and packages of one run. A package the run itself records (``run.versions``: the code that
    trained or evaluated) wins over the worker's environment."""
    machine = record["machine"]
    recorded = record["run"].get("versions", {})
    versions = {name: recorded.get(name, v) for name, v in machine["versions"].items()}
    packages = ", ".join(f"{name} {v}" for name, v in versions.items() if v)
    return (f"{machine['cpu']} ({machine['cores']} cores, {machine['torch_threads']} torch threads per run, "
            f"shared with other work), Python {machine['python']}, {packages}; device {record['run']['device']}")


NOT_RECORDED = "not recorded"


def provenance(record: Record) -> str:
    """The code and evaluation a run's numbers come from: its git commit (12 digits, ``+dirty`` where the checkout
    had uncommitted changes; for a run scored again, also the commit that trained its adapter) and its evaluation
    switches (e.g. ``option_scorer prompt-cache``). A record written before runs recorded them (issue 26) says
    ``not recorded``, never a guess."""
    run = record["run"]
    code = _commit(run.get("source"))
    if "trained_by" in run:  # a run scored again (`harness.scored_again`)
        code += f" (adapter trained at {_commit(run['trained_by']['source'])})"
    switches = run.get("evaluation")
    if switches is None:
        return f"{code}, evaluation switches {NOT_RECORDED}"
    return ", ".join([code, *(f"{name} {value}" for name, value in sorted(switches.items()))])


def _commit(source: dict[str, Any] | None) -> str:
    if source is None:
        return f"commit {NOT_RECORDED}"
    if source["commit"] == "unknown":
        return "commit unknown (not run from a git checkout)"
    return f"{source['commit'][:12]}{'+dirty' if source['dirty'] is True else ''}"


def code_note(records: Sequence[Record]) -> str:
    """Which code and evaluation (`provenance`) produced the runs: one statement when every run shares them, else
    per row (a table's ``method``, or the labels but the seed) the runs of each, so a row mixing versions shows."""
    versions = {provenance(r) for r in records}
    if len(versions) == 1:
        return f"Code and evaluation (git commit, switches): {versions.pop()} for every run"
    keys = (["method"] if all("method" in r["labels"] for r in records) else
            sorted({key for r in records for key in r["labels"]} - {"seed"}))
    rows = group([{**r, "labels": {**dict.fromkeys(keys), **r["labels"]}} for r in records], keys)  # None: no label
    parts = []
    for key, runs in rows.items():
        seeds = [r["labels"].get("seed") for r in runs]
        by_seed = None not in seeds and len(set(seeds)) == len(seeds)  # else a row over several columns
        by_version = group([{**r, "labels": {**r["labels"], "version": provenance(r)}} for r in runs],
                           ["version"])
        described = [f"{version} ({_runs_named(members, by_seed)})" for (version,), members in by_version.items()]
        mixed = " **mixes code versions**" if len(by_version) > 1 else ""
        parts.append(f"{', '.join(str(k) for k in key if k is not None)}{mixed}: {'; '.join(described)}")
    return "Code and evaluation (git commit, switches) by row: " + " | ".join(parts)


def _runs_named(records: Sequence[Record], by_seed: bool) -> str:
    if not by_seed:
        return ", ".join(r["id"] for r in records)
    seeds = sorted(r["labels"]["seed"] for r in records)
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))
