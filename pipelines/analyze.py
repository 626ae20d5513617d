"""``nsm analyze``: the seed's weight-normalization figures from the activity that ``nsm train`` records.

The seed ("Inherent Weight Normalization in Stochastic Neural Networks") shows that NSM units keep
the input distribution of the last hidden layer steady during training, much as batch normalization
does, and keep the third layer's weights contracted around their mean, unlike a stochastic network
without normalization. This command draws both from the runs' ``activity.jsonl`` files:

  input_percentiles.png  15th/50th/85th percentile of the last hidden layer's input vs epoch, one
                         panel per run (for NSM units the firing logit v, for others W z + b or the
                         batch-norm input)
  weight_evolution.png   the third weight layer's values over training: 5-95 and 15-85 percentile
                         bands and the median vs epoch, and histograms at the first, middle and last
                         record, one column per run
  analysis.json          the numbers behind both figures and the summary

and prints a Markdown summary: per run, the 15-85 spread of the input and the 5-95 spread of the
weights at the first and the last record.

``activity.jsonl`` holds one JSON object per line (several per epoch):

  {"epoch": float (fractional), "step": int, "neuron": "<kind>",
   "last_hidden": {"layer": str, "percentiles": {"15": f, "50": f, "85": f}},
   "third_layer": {"layer": str, "percentiles": {"5": f, "15": f, "50": f, "85": f, "95": f},
                   "hist_edges": [f, ...] (increasing), "hist_counts": [int, ...] (one fewer; integral floats
                   such as 3.0 are accepted)}}

Records are ordered by step; when a step appears more than once (a run resumed with ``--resume``
records it again) the last line written wins.

Runs are given as run folders (``--run RUN ...``), as the output folder of ``nsm compare`` (its
``runs/*`` folders), or as checkpoints (``--checkpoint RUN/checkpoint.pt``, meaning the folder it
lies in).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from events.atomic import atomic_file
from events.errors import InputError, MissingInputError
from nsm.neurons import KINDS

from .figures import new_figure, save_png
from .runs import ACTIVITY, numbered_records

INPUT_PERCENTILES = ("15", "50", "85")
WEIGHT_PERCENTILES = ("5", "15", "50", "85", "95")


@dataclass
class Activity:
    """The activity records of one run, ordered by step."""

    run: Path
    neuron: str
    label: str
    records: list[dict]

    def column(self, part: str, key: str) -> list[float]:
        return [r[part]["percentiles"][key] for r in self.records]

    @property
    def epochs(self) -> list[float]:
        return [r["epoch"] for r in self.records]

    @property
    def steps(self) -> list[int]:
        return [r["step"] for r in self.records]

    def snapshot_indices(self) -> dict[str, int]:
        """Record index of the first, middle and last record (positions that coincide are merged)."""
        n = len(self.records)
        out: dict[str, int] = {}
        for name, i in (("first", 0), ("middle", n // 2), ("last", n - 1)):
            if i not in out.values():
                out[name] = i
        return out


def neuron_name(kind: str) -> str:
    return KINDS[kind].label if kind in KINDS else kind


def _number(value, where: str, field: str, integer: bool = False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise InputError(f"{where}: {field} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise InputError(f"{where}: {field} must be finite, got {value!r}")
    return value


def _percentiles(part: dict, keys: tuple[str, ...], where: str, field: str) -> None:
    pct = part.get("percentiles")
    if not isinstance(pct, dict):
        raise InputError(f"{where}: {field}.percentiles must be an object with keys {', '.join(keys)}")
    for k in keys:
        if k not in pct:
            raise InputError(f"{where}: {field}.percentiles lacks the {k}th percentile")
        _number(pct[k], where, f"{field}.percentiles[{k!r}]")
    values = [pct[k] for k in keys]
    if any(a > b for a, b in zip(values, values[1:])):
        raise InputError(f"{where}: {field}.percentiles are not non-decreasing: {values}")


def _check_record(record, where: str) -> None:
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("epoch", "step", "neuron", "last_hidden", "third_layer"):
        if key not in record:
            raise InputError(f"{where}: missing field {key!r}")
    _number(record["epoch"], where, "epoch")
    _number(record["step"], where, "step", integer=True)
    if not isinstance(record["neuron"], str) or not record["neuron"]:
        raise InputError(f"{where}: neuron must be a non-empty string, got {record['neuron']!r}")
    for field, keys in (("last_hidden", INPUT_PERCENTILES), ("third_layer", WEIGHT_PERCENTILES)):
        part = record[field]
        if not isinstance(part, dict):
            raise InputError(f"{where}: {field} must be an object")
        if not isinstance(part.get("layer"), str):
            raise InputError(f"{where}: {field}.layer must be the layer's module name (a string)")
        _percentiles(part, keys, where, field)
    third = record["third_layer"]
    edges, counts = third.get("hist_edges"), third.get("hist_counts")
    if not isinstance(edges, list) or not isinstance(counts, list) or len(counts) < 1 or len(edges) != len(counts) + 1:
        raise InputError(f"{where}: third_layer needs hist_edges (n + 1 numbers) and hist_counts (n >= 1 integers)")
    for i, e in enumerate(edges):
        _number(e, where, f"third_layer.hist_edges[{i}]")
    if any(a >= b for a, b in zip(edges, edges[1:])):
        raise InputError(f"{where}: third_layer.hist_edges must be strictly increasing")
    for i, c in enumerate(counts):
        _number(c, where, f"third_layer.hist_counts[{i}]")
        if c < 0 or c != int(c):
            raise InputError(f"{where}: third_layer.hist_counts[{i}] must be a count (integer >= 0), got {c!r}")


def read_activity(run: Path) -> Activity:
    """Parse and check ``run/activity.jsonl``. Errors name the run, or the file and line."""
    path = run / ACTIVITY
    if not path.is_file():
        raise MissingInputError(
            f"{run}: no {ACTIVITY} in this run folder; it is written by 'nsm train' "
            "(train the run, or pass the folder that holds it)"
        )
    by_step: dict[int, dict] = {}
    kinds: set[str] = set()
    for lineno, record in numbered_records(path):
        _check_record(record, f"{path}: line {lineno}")
        kinds.add(record["neuron"])
        by_step[record["step"]] = record
    if not by_step:
        raise InputError(f"{path}: no activity records")
    if len(kinds) > 1:
        raise InputError(f"{path}: records of several neuron kinds {sorted(kinds)}; one run has one kind")
    kind = kinds.pop()
    records = [by_step[s] for s in sorted(by_step)]
    return Activity(run=run, neuron=kind, label=neuron_name(kind), records=records)


def _label_runs(runs: list[Activity]) -> None:
    """Human labels; runs sharing a neuron kind are told apart by their folder name."""
    for a in runs:
        if sum(b.neuron == a.neuron for b in runs) > 1:
            a.label = f"{neuron_name(a.neuron)} [{a.run.name}]"


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 4)
    return -(-n // cols), cols


def plot_input_percentiles(runs: list[Activity], path) -> Path:
    rows, cols = _grid(len(runs))
    fig = new_figure(4.2 * cols, 3.3 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, a in zip(axes, runs):
        x = a.epochs
        lo, mid, hi = (a.column("last_hidden", k) for k in INPUT_PERCENTILES)
        ax.fill_between(x, lo, hi, alpha=0.25, color="C0", label="15th-85th")
        ax.plot(x, lo, color="C0", linewidth=1)
        ax.plot(x, hi, color="C0", linewidth=1)
        ax.plot(x, mid, color="C3", linewidth=1.5, label="50th")
        ax.set_title(a.label, fontsize="medium")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"input of {a.records[-1]['last_hidden']['layer']}", fontsize="small")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", loc="best")
    for ax in axes[len(runs) :]:
        ax.set_visible(False)
    fig.suptitle("Last hidden layer: input percentiles (15th, 50th, 85th) during training")
    return save_png(fig, path)


def plot_weight_evolution(runs: list[Activity], path) -> Path:
    rows, cols = _grid(len(runs))
    fig = new_figure(4.2 * cols, 5.6 * rows)
    axes = fig.subplots(2 * rows, cols, squeeze=False)
    for k, a in enumerate(runs):
        r, c = divmod(k, cols)
        bands, hists = axes[2 * r, c], axes[2 * r + 1, c]
        x = a.epochs
        p5, p15, p50, p85, p95 = (a.column("third_layer", q) for q in WEIGHT_PERCENTILES)
        bands.fill_between(x, p5, p95, alpha=0.2, color="C0", label="5th-95th")
        bands.fill_between(x, p15, p85, alpha=0.35, color="C0", label="15th-85th")
        bands.plot(x, p50, color="C3", linewidth=1.5, label="median")
        bands.set_title(a.label, fontsize="medium")
        bands.set_xlabel("epoch")
        bands.set_ylabel(f"weights of {a.records[-1]['third_layer']['layer']}", fontsize="small")
        bands.grid(alpha=0.3)
        bands.legend(fontsize="x-small", loc="best")
        for j, (name, i) in enumerate(a.snapshot_indices().items()):
            third = a.records[i]["third_layer"]
            edges = np.asarray(third["hist_edges"], dtype=float)
            counts = np.asarray(third["hist_counts"], dtype=float)
            total = counts.sum()
            density = counts / (total * np.diff(edges)) if total > 0 else counts
            hists.stairs(density, edges, color=f"C{j}", label=f"{name} (epoch {a.records[i]['epoch']:.2f})")
        hists.set_xlabel("weight value")
        hists.set_ylabel("density")
        hists.grid(alpha=0.3)
        hists.legend(fontsize="x-small", loc="best")
    for k in range(len(runs), rows * cols):
        r, c = divmod(k, cols)
        axes[2 * r, c].set_visible(False)
        axes[2 * r + 1, c].set_visible(False)
    fig.suptitle("Third weight layer: distribution during training")
    return save_png(fig, path)


def summarize(a: Activity) -> dict:
    """Spreads at the first and last record: input 85th - 15th, weights 95th - 5th and 85th - 15th."""
    first, last = a.records[0], a.records[-1]

    def spread(record, part, lo, hi):
        pct = record[part]["percentiles"]
        return float(pct[hi] - pct[lo])

    return {
        "epochs": [float(first["epoch"]), float(last["epoch"])],
        "input_spread_15_85": [spread(first, "last_hidden", "15", "85"), spread(last, "last_hidden", "15", "85")],
        "input_median": [
            float(first["last_hidden"]["percentiles"]["50"]),
            float(last["last_hidden"]["percentiles"]["50"]),
        ],
        "weight_spread_5_95": [spread(first, "third_layer", "5", "95"), spread(last, "third_layer", "5", "95")],
        "weight_spread_15_85": [spread(first, "third_layer", "15", "85"), spread(last, "third_layer", "15", "85")],
    }


def analysis(runs: list[Activity]) -> dict:
    """The numbers behind the figures, as written to ``analysis.json`` (values copied from the records)."""
    out = []
    for a in runs:
        snaps = a.snapshot_indices()
        out.append(
            {
                "run": str(a.run),
                "name": a.run.name,
                "neuron": a.neuron,
                "label": a.label,
                "records": len(a.records),
                "epoch": a.epochs,
                "step": a.steps,
                "last_hidden": {
                    "layer": a.records[-1]["last_hidden"]["layer"],
                    "percentiles": {k: a.column("last_hidden", k) for k in INPUT_PERCENTILES},
                },
                "third_layer": {
                    "layer": a.records[-1]["third_layer"]["layer"],
                    "percentiles": {k: a.column("third_layer", k) for k in WEIGHT_PERCENTILES},
                    "histograms": [
                        {
                            "position": name,
                            "epoch": a.records[i]["epoch"],
                            "step": a.records[i]["step"],
                            "hist_edges": a.records[i]["third_layer"]["hist_edges"],
                            "hist_counts": a.records[i]["third_layer"]["hist_counts"],
                        }
                        for name, i in snaps.items()
                    ],
                },
                "summary": summarize(a),
            }
        )
    return {"figures": ["input_percentiles.png", "weight_evolution.png"], "runs": out}


def markdown(result: dict) -> str:
    lines = [
        "| run | neuron | records | epochs | input 15-85 spread (first -> last) | weight 5-95 spread (first -> last) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["runs"]:
        s = r["summary"]
        lines.append(
            f"| {r['name']} | {r['label']} | {r['records']} | {s['epochs'][0]:.2f}-{s['epochs'][1]:.2f} | "
            f"{s['input_spread_15_85'][0]:.4g} -> {s['input_spread_15_85'][1]:.4g} | "
            f"{s['weight_spread_5_95'][0]:.4g} -> {s['weight_spread_5_95'][1]:.4g} |"
        )
    return "\n".join(lines)


def _write_json(data: dict, path: Path) -> None:
    with atomic_file(path, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")


def analyze(run_folders: list[Path], out) -> dict:
    """Read each run folder's ``activity.jsonl``, draw ``input_percentiles.png`` and ``weight_evolution.png`` into
    the folder ``out``, write ``analysis.json`` there, print the summary and return the numbers."""
    runs = [read_activity(Path(p)) for p in run_folders]
    _label_runs(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot_input_percentiles(runs, out / "input_percentiles.png")
    plot_weight_evolution(runs, out / "weight_evolution.png")
    result = analysis(runs)
    _write_json(result, out / "analysis.json")
    print(markdown(result))
    print(f"\nwrote {out / 'input_percentiles.png'}, {out / 'weight_evolution.png'} and {out / 'analysis.json'}")
    return result
