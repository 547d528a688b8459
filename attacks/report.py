"""Reports of ``fedshield audit``: ``report.md``, a self-contained ``report.html`` and ``figures/``.

Everything is drawn from the results dict alone (the content of ``results.json``), so an archived audit can
be reported again. The tables are :func:`attacks.harness.summarise` rows (one per task and defence, averaged
over seeds); each figure is a PNG with the numbers it plots beside it as JSON. The report is first built as a
list of blocks (headings, paragraphs, tables, checks, figures) that two renderers turn into Markdown and
HTML, so both always say the same thing.

``report.html`` is one file: the PNGs are data URIs, the style and the script are inline, and its
Content-Security-Policy admits those two by hash and nothing else. Task and defence names come from
user-written config files, so every string is escaped on the way out, and ``$`` is escaped for matplotlib
(whose mathtext would otherwise parse, and could fail on, a name such as ``eps=$1``).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import textwrap
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from attacks.audit import one_run_epsilon_lower_bound
from attacks.harness import expected_orderings, summarise

__all__ = ["write_reports"]

Row = dict[str, Any]  # one summarise() row
Cell = Mapping[str, Any]  # one record of results["cells"]

DASH = "–"
AUDIT_CONFIDENCE = 0.95  # attacks.canary.canary_audit's default, which the harness uses
LOW_FPR = 0.001  # the TPR@0.1% FPR column needs at least 1 / LOW_FPR non-members to be resolved
TITLE = "fedshield audit report"


# --------------------------------------------------------------------------------------------
# Reading the results
# --------------------------------------------------------------------------------------------


def _get(node: Any, path: str) -> Any:
    """``node[a][b]...`` for ``path = "a.b..."``; None where a step is missing."""
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class _Task:
    name: str
    rows: tuple[Row, ...]  # one per defence, in grid order
    cells: Mapping[str, tuple[Cell, ...]]  # defence -> its records, by seed
    central: float | None  # centralised baseline accuracy

    def row(self, defence: str) -> Row | None:
        return next((r for r in self.rows if r["defence"] == defence), None)

    def first(self, defence: str) -> Cell | None:
        cells = self.cells.get(defence, ())
        return cells[0] if cells else None

    def all_cells(self) -> Iterable[Cell]:
        return (c for cells in self.cells.values() for c in cells)

    @property
    def has_images(self) -> bool:
        return any(_get(c, "inversion.truth") for c in self.all_cells())

    @property
    def dataset(self) -> str:
        return next((str(d) for c in self.all_cells() if (d := _get(c, "config.data.name"))), "")


def _tasks(results: Mapping[str, Any]) -> list[_Task]:
    grouped: dict[str, dict[str, list[Cell]]] = {}
    for cell in results.get("cells", []):
        grouped.setdefault(str(cell["task"]), {}).setdefault(str(cell["defence"]), []).append(cell)
    rows: dict[str, list[Row]] = {}
    for row in summarise(results):
        rows.setdefault(str(row["task"]), []).append(row)
    tasks = []
    for name, by_defence in grouped.items():
        cells = {d: tuple(sorted(cs, key=lambda c: _number(c.get("seed")) or 0.0))
                 for d, cs in by_defence.items()}
        task_rows = tuple(rows.get(name, ()))
        central = task_rows[0]["centralized_accuracy"] if task_rows else None
        tasks.append(_Task(name, task_rows, cells, central))
    return tasks


def _hidden(cells: Sequence[Cell]) -> str:
    """What the server holds instead of a client's update, as a table entry."""
    sees = " ".join(str(_get(c, f"{probe}.client.sees") or "")
                    for c in cells for probe in ("inversion", "membership"))
    ckks = "CKKS" in sees or any(_get(c, "config.run.aggregation") == "ckks" for c in cells)
    return "hidden (CKKS)" if ckks else "hidden (masked)"


def _resolution(cells: Iterable[Cell], view: str) -> float | None:
    """The coarsest FPR step (1 / non-members) of a membership view over ``cells``."""
    values = [v for c in cells if (v := _number(_get(c, f"membership.{view}.fpr_resolution"))) is not None]
    return max(values) if values else None


def _audit_ceiling(cells: Iterable[Cell]) -> float | None:
    """The largest ε the canary audit can certify at all (every guess right) with the grid's canary count."""
    for cell in cells:
        made, canaries = _get(cell, "audit.guesses_made"), _get(cell, "audit.canaries")
        if isinstance(made, int) and isinstance(canaries, int) and made > 0:
            delta = _number(_get(cell, "config.dp.delta")) or 1e-5
            try:
                return one_run_epsilon_lower_bound(made, made, canaries, delta, AUDIT_CONFIDENCE)
            except ValueError:
                return None
    return None


def _grid_warnings(results: Mapping[str, Any]) -> list[str]:
    """Records that the grid should not hold twice, and cells of the configured grid that have no record."""
    seen = Counter((str(c["task"]), str(c["defence"]), c.get("seed")) for c in results.get("cells", []))
    out = [f"{n} records for task “{t}”, defence “{d}”, seed {s}: the tables average them as if they were "
           "different seeds." for (t, d, s), n in seen.items() if n > 1]
    config = results.get("audit_config") or {}
    for seed in config.get("seeds", []):
        for task in config.get("tasks", []):
            for defence in config.get("defences", []):
                key = (str(task.get("name")), str(defence.get("name")), seed)
                only = defence.get("tasks") or []
                if (not only or key[0] in only) and key not in seen:
                    out.append(f"no record for task “{key[0]}”, defence “{key[1]}”, seed {seed}: it is "
                               "missing from every table and figure.")
    return out


# --------------------------------------------------------------------------------------------
# The document: blocks that both renderers understand
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class _Paragraph:
    text: str


@dataclass(frozen=True)
class _Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class _Table:
    columns: tuple[tuple[str, str], ...]  # (group, label); group "" for a column of its own
    body: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = ()
    numeric: bool = False  # right-align every column but the first


@dataclass(frozen=True)
class _Checks:
    items: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class _Figure:
    stem: str  # file name without suffix, under figures/
    caption: str
    png: bytes
    data: Mapping[str, Any]  # the plotted numbers


_Block = _Heading | _Paragraph | _Bullets | _Table | _Checks | _Figure


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _num(value: float | None, spec: str) -> str:
    return DASH if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.1f}%"


def _bytes(value: float | None) -> str:
    if value is None:
        return DASH
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def _seconds(value: float | None) -> str:
    if value is None:
        return DASH
    if value >= 1:
        return f"{value:.3g} s"
    return f"{value * 1e3:.3g} ms" if value >= 1e-3 else f"{value * 1e6:.3g} µs"


def _count(n: Any, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _epsilon(value: float | None) -> str:
    return "∞ (none)" if value is None else f"{value:.2f}"


_Render = Callable[[Row, Sequence[Cell]], str]
_Column = tuple[str, str, _Render]


def _value(key: str, fmt: Callable[[Any], str]) -> _Render:
    return lambda row, cells: fmt(row[key])


def _client_only(probe: str, render: _Render, first: bool = False) -> _Render:
    """A client-view column of ``probe``: "hidden" where SecAgg or CKKS keep the update from the server."""
    def client(row: Row, cells: Sequence[Cell]) -> str:
        if row["client_observable"]:
            return render(row, cells)
        if not any(_get(c, f"{probe}.client") for c in cells):
            return DASH  # the probe did not run
        return _hidden(cells) if first else "hidden"
    return client


def _low_fpr(key: str, view: str) -> _Render:
    """TPR at 0.1% FPR, marked † where the view has too few non-members to resolve that FPR."""
    def tpr(row: Row, cells: Sequence[Cell]) -> str:
        coarse = (_resolution(cells, view) or 0.0) > LOW_FPR and row[key] is not None
        return _pct(row[key]) + ("†" if coarse else "")
    return tpr


def _result_columns(images: bool) -> list[_Column]:
    cols: list[_Column] = [
        ("", "Defence", lambda row, cells: str(row["defence"])),
        ("Utility", "accuracy", _value("accuracy", lambda v: _num(v, ".3f"))),
        ("Utility", "Δ vs centralised (pts)",
         _value("accuracy_gap", lambda v: _num(None if v is None else 100 * v, "+.1f"))),
        ("Privacy", "accountant ε", _value("epsilon", _epsilon)),
        ("Privacy", "audit ε lower bound", _value("audit_epsilon_lb", lambda v: _num(v, ".2f"))),
    ]
    if images:
        group = "Inversion (client)"
        cols += [
            (group, "PSNR (dB)",
             _client_only("inversion", _value("inv_client_psnr", lambda v: _num(v, ".1f")), first=True)),
            (group, "SSIM", _client_only("inversion", _value("inv_client_ssim", lambda v: _num(v, ".2f")))),
            (group, "labels", _client_only("inversion", _value("inv_client_labels", _pct))),
            ("Inversion (aggregate)", "PSNR (dB)", _value("inv_agg_psnr", lambda v: _num(v, ".1f"))),
        ]
    for view, key in (("client", "mia_client"), ("aggregate", "mia_agg")):
        group = f"MIA ({view})"
        mia: list[_Column] = [
            (group, "AUC", _value(f"{key}_auc", lambda v: _num(v, ".3f"))),
            (group, "TPR@0.1% FPR", _low_fpr(f"{key}_tpr_0_1", view)),
            (group, "TPR@1% FPR", _value(f"{key}_tpr_1", _pct)),
        ]
        if view == "client":
            mia = [(g, label, _client_only("membership", render, first=i == 0))
                   for i, (g, label, render) in enumerate(mia)]
        cols += mia
    return cols + [
        ("Per round", "upload / client", _value("upload_bytes", _bytes)),
        ("Per round", "client time", _value("client_time_s", _seconds)),
        ("Per round", "server time", _value("server_time_s", _seconds)),
    ]


def _results_table(task: _Task, seeds: int) -> _Table:
    columns = _result_columns(task.has_images)
    body = [[render(row, task.cells.get(row["defence"], ())) for _, _, render in columns]
            for row in task.rows]
    # a column with nothing in it (an attack switched off, say) is left out, and so is its note
    keep = [0] + [j for j in range(1, len(columns)) if any(line[j] != DASH for line in body)]
    header = tuple(columns[j][:2] for j in keep)
    kept = tuple(tuple(line[j] for j in keep) for line in body)
    return _Table(header, kept, tuple(_result_notes(task, seeds, header, kept)), numeric=True)


def _result_notes(task: _Task, seeds: int, header: Sequence[tuple[str, str]],
                  body: Sequence[Sequence[str]]) -> list[str]:
    groups = {group for group, _ in header}
    labels = {label for _, label in header}
    notes = [f"Mean over {seeds} seeds."] if seeds > 1 else []
    if task.central is not None:
        notes.append("Centralised baseline (the same model trained on the pooled data): accuracy "
                     f"{task.central:.3f}; Δ is the defence's accuracy minus it, in percentage points.")
    notes.append("Accountant ε: the DP accountant's bound for the whole training run; ∞ (none) means no DP "
                 "guarantee." + (f" Audit ε lower bound: canary audit, {AUDIT_CONFIDENCE:.0%} confidence."
                                 if "audit ε lower bound" in labels else ""))
    prior = next((r["inv_prior_psnr"] for r in task.rows if r["inv_prior_psnr"] is not None), None)
    if prior is not None and any(g.startswith("Inversion") for g in groups):
        notes.append(f"Prior guess: the mean training image scores {prior:.1f} dB PSNR against the probe's "
                     "images; a reconstruction at or below that reveals nothing about them.")
    if any(g.startswith("MIA") for g in groups):
        notes.append("MIA: membership inference after training, by the server from one client's update "
                     "(client) and from the released aggregate (aggregate); the strongest attack per cell.")
    if any(v.endswith("†") for line in body for v in line):
        coarse = max(r for v in ("client", "aggregate") if (r := _resolution(task.all_cells(), v)))
        notes.append(f"† fewer than {1 / LOW_FPR:.0f} non-members (FPR step up to {coarse:.2g}): the TPR at "
                     "0.1% FPR is the TPR at FPR 0.")
    if any(v.startswith("hidden") for line in body for v in line):
        notes.append("hidden: the server holds only a masked vector (SecAgg, SecAgg+, distributed DP) or a "
                     "CKKS ciphertext of each client's update, so the client-view attacks have nothing to "
                     "attack.")
    notes.append("Per round: mean over the rounds; times are wall-clock on this machine (in-process "
                 "simulation, no network).")
    return notes


def _config_of(results: Mapping[str, Any], task: _Task) -> Mapping[str, Any]:
    for entry in _get(results, "audit_config.tasks") or []:
        if str(entry.get("name")) == task.name and isinstance(entry.get("config"), Mapping):
            return entry["config"]
    cell = next(iter(task.all_cells()), None)
    return _get(cell, "config") or {}


def _task_line(task: _Task, cfg: Mapping[str, Any]) -> tuple[str, ...]:
    def g(path: str) -> Any:
        return _get(cfg, path)

    data = f"{g('data.name')}, {g('data.partition')} partition"
    if g("data.partition") == "dirichlet":
        data += f" (α = {g('data.alpha')})"
    model = str(g("model.name"))
    if model == "mlp":
        model += f" {g('model.hidden')}, {g('model.activation')}"
    clients = _number(g("data.num_clients")) or 0
    rate = _number(g("sampling.rate")) or 0.0
    if g("sampling.method") == "poisson":
        sampling = f"Poisson, q = {rate:g} (≈ {rate * clients:.0f} clients/round)"
    else:
        sampling = f"{g('sampling.clients_per_round') or f'{clients:.0f}'} clients/round"
    batch = g("client.batch_size")
    local = (f"{_count(g('client.epochs'), 'epoch')}, batch {batch or 'full'}, lr {g('client.lr')}, "
             f"{g('server.strategy') or 'fedavg'}")
    return (task.name, data, f"{clients:.0f}", model, str(g("run.rounds")), sampling, local,
            _num(task.central, ".3f"))


def _tasks_table(results: Mapping[str, Any], tasks: Sequence[_Task]) -> _Table:
    names = ("Task", "Data", "Clients", "Model", "Rounds", "Sampling", "Local training",
             "Centralised accuracy")
    columns = tuple(("", name) for name in names)
    return _Table(columns, tuple(_task_line(t, _config_of(results, t)) for t in tasks))


def _defences_table(results: Mapping[str, Any], tasks: Sequence[_Task]) -> _Table:
    entries = list(_get(results, "audit_config.defences") or [])
    known = {str(e.get("name")) for e in entries}
    entries += [{"name": r["defence"]} for t in tasks for r in t.rows if r["defence"] not in known]
    body = []
    for entry in dict((str(e.get("name")), e) for e in entries).values():
        overrides = entry.get("overrides") or {}
        settings = ", ".join(f"{section}.{key} = {value}" for section, values in overrides.items()
                             for key, value in (values or {}).items())
        body.append((str(entry.get("name")), settings or "(no overrides: the baseline)",
                     ", ".join(map(str, entry.get("tasks") or [])) or "all"))
    return _Table((("", "Defence"), ("", "Settings"), ("", "Tasks")), tuple(body))


def _run_lines(results: Mapping[str, Any]) -> list[str]:
    seeds = results.get("seeds") or sorted({c.get("seed") for c in results.get("cells", [])})
    lines = [f"Seeds: {', '.join(map(str, seeds))}."]
    a = _get(results, "audit_config.attacks") or {}
    parts = []
    if a.get("inversion"):
        parts.append(f"gradient inversion ({_count(a.get('inversion_clients'), 'client')} × "
                     f"{_count(a.get('inversion_batch'), 'example')}, "
                     f"{_count(a.get('inversion_restarts'), 'restart')})")
    if a.get("membership"):
        parts.append(f"membership inference (cohort: {a.get('membership_clients') or 'the expected cohort'})")
    if a.get("canary"):
        parts.append(f"canary audit ({a.get('canary_count')} canaries of dimension {a.get('canary_dim')}, "
                     f"guess fraction {a.get('canary_guess_fraction')})")
    if parts:
        lines.append("Attacks: " + "; ".join(parts) + ".")
    versions = results.get("versions") or {}
    if versions:
        lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    wall = _number(_get(results, "timing.grid_wall_s"))
    if wall is not None:
        lines.append(f"Grid wall time: {wall:.0f} s.")
    return lines


# --------------------------------------------------------------------------------------------
# How to read this
# --------------------------------------------------------------------------------------------


def _caveats(results: Mapping[str, Any], tasks: Sequence[_Task]) -> list[str]:
    a = _get(results, "audit_config.attacks") or {}
    out = []
    if any(t.has_images for t in tasks):
        out.append(
            "The inversion probe is the attacker's best case: one round at the published initial weights, "
            f"{_count(a.get('inversion_batch', 1), 'example')} per client, "
            f"{_count(a.get('inversion_clients', '?'), 'client')} in the aggregate, and an adaptive attacker "
            "that knows the clip, the noise, the top-k mask, the quantiser and the number of clients summed. "
            "A trained model, larger batches and more clients leak less: read the PSNRs as an upper end, and "
            "anything near the prior-guess PSNR as nothing recovered.")
    out.append(
        "Central DP does not hide updates from the server: the server adds the noise itself, so it sees "
        "every client's update in the clear (the client-view columns of central-DP rows); DP protects the "
        "released model. Only SecAgg, SecAgg+ and CKKS (and distributed DP, which runs over SecAgg+) hide "
        "individual updates, and the sum they reveal still leaks unless noise is added to it.")
    cells = [c for t in tasks for c in t.all_cells()]
    steps = [r for v in ("client", "aggregate") if (r := _resolution(cells, v))]
    if steps:
        coarse = max(steps)
        resolved = ("every view has enough non-members to resolve it" if coarse <= LOW_FPR else
                    f"here some views hold only about {1 / coarse:.0f} non-members, so that column is the "
                    "TPR at FPR 0 (marked †)")
        out.append("Membership AUC 0.5 is chance; the low-FPR columns are what matters for a confident "
                   f"attacker. TPR at 0.1% FPR needs at least {1 / LOW_FPR:.0f} non-members to be measured: "
                   f"{resolved}.")
    if any(_get(c, "audit") for c in cells):
        out.append(_canary_caveat(tasks))
    out.append("The accountant's ε is an upper bound for the whole run at the configured δ; the audit's "
               "bound is a lower bound, so a gap between them is expected, and a bound above the "
               "accountant's ε would mean the mechanism leaks more than it claims.")
    if len(results.get("seeds") or []) <= 1:
        out.append("One seed: differences of a few points of accuracy or a few hundredths of AUC are within "
                   "run-to-run noise.")
    return out


def _canary_caveat(tasks: Sequence[_Task]) -> str:
    text = (f"The canary audit's ε is a lower bound that holds with {AUDIT_CONFIDENCE:.0%} confidence. Its "
            "ceiling depends on the number of canaries, not on the leak")
    cells = [c for t in tasks for c in t.all_cells()]
    ceiling = _audit_ceiling(cells)
    if ceiling is None:
        return text + "."
    canaries = next(_get(c, "audit.canaries") for c in cells if _get(c, "audit.canaries"))
    text += (f": with {canaries} canaries even an attacker that is right on every guess certifies at most "
             f"ε ≈ {ceiling:.2f}")
    no_noise = [b for c in cells if _get(c, "privacy.epsilon") is None
                and (b := _number(_get(c, "audit.epsilon_lower_bound"))) is not None]
    if no_noise:
        text += (f". Without noise the true ε is unbounded, yet the cells without DP reach only "
                 f"{max(no_noise):.2f}: a limit of the audit, not a guarantee")
    return text + "."


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

_MARKERS = "osD^vPX<>hpd8"
_Style = tuple[Any, str, float]  # colour, marker, marker area


def _styles(tasks: Sequence[_Task]) -> dict[str, _Style]:
    """One colour and marker per defence, the same in every figure; "none" is black."""
    cmap = colormaps["tab20"]
    palette = [cmap(i) for i in (*range(0, 20, 2), *range(1, 20, 2))]  # the dark shades first
    names = list(dict.fromkeys(str(r["defence"]) for t in tasks for r in t.rows))
    styles: dict[str, _Style] = {}
    for k, name in enumerate(n for n in names if n != "none"):
        # later markers are smaller, so that defences with equal figures all stay visible
        styles[name] = (palette[k % len(palette)], _MARKERS[k % len(_MARKERS)], max(45.0, 95.0 - 5.0 * k))
    if "none" in names:
        styles["none"] = ("black", "o", 120.0)
    return styles


def _mpl(text: str) -> str:
    """Text for matplotlib: ``$`` would start mathtext."""
    return text.replace("$", r"\$")


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    return buffer.getvalue()


def _mark(ax: Axes, styles: Mapping[str, _Style], defence: str, x: float, y: float) -> Artist:
    colour, marker, size = styles[defence]
    return ax.scatter([x], [y], color=colour, marker=marker, s=size, edgecolors="white", linewidths=0.6,
                      zorder=3)


def _figure_legend(fig: Figure, legend: Mapping[str, Artist]) -> None:
    if legend:
        fig.legend(list(legend.values()), [_mpl(k) for k in legend], loc="outside lower center",
                   ncols=min(4, len(legend)), fontsize=8, frameon=False)


def _epsilon_axis(ax: Axes, epsilons: Sequence[float], infinity: float | None = None) -> None:
    """Log ε axis with ticks at the grid's ε values and, for cells without DP, one at "∞"."""
    ax.set_xscale("log")
    lo, hi = min(epsilons, default=1.0), max(epsilons, default=1.0)
    ticks = sorted({float(f"{e:.2g}") for e in epsilons})
    labels = [f"{t:g}" for t in ticks]
    right = hi * 1.8
    if infinity is not None:
        ticks.append(infinity)
        labels.append("∞\n(no DP)")
        right = infinity * 1.6
        ax.axvline(math.sqrt(hi * infinity), color="0.7", linewidth=0.8)
    ax.set_xlim(lo / 1.8, right)
    ax.set_xticks(ticks, labels)
    ax.xaxis.set_minor_locator(NullLocator())


def _privacy_utility(tasks: Sequence[_Task], styles: Mapping[str, _Style]) -> _Figure:
    fig = Figure(figsize=(0.6 + 5.2 * len(tasks), 4.8), layout="constrained")
    legend: dict[str, Artist] = {}
    data = [_draw_privacy_utility(ax, task, styles, legend)
            for ax, task in zip(fig.subplots(1, len(tasks), squeeze=False)[0], tasks, strict=True)]
    _figure_legend(fig, legend)
    caption = ("Privacy–utility: test accuracy of each DP defence against its accountant ε (log scale). "
               "Dashed: no defence; dotted: centralised training on the pooled data.")
    return _Figure("privacy_utility", caption, _png(fig),
                   {"x": "accountant epsilon", "y": "test accuracy", "tasks": data})


def _draw_privacy_utility(ax: Axes, task: _Task, styles: Mapping[str, _Style],
                          legend: dict[str, Artist]) -> dict[str, Any]:
    points = [r for r in task.rows if (r["epsilon"] or 0) > 0 and r["accuracy"] is not None]
    for row in points:
        legend[row["defence"]] = _mark(ax, styles, row["defence"], row["epsilon"], row["accuracy"])
    none = task.row("none")
    baseline = none["accuracy"] if none else None
    if baseline is not None:
        legend["no defence (accuracy)"] = ax.axhline(baseline, color="0.4", linestyle="--", linewidth=1.2)
    if task.central is not None:
        legend["centralised (pooled data)"] = ax.axhline(task.central, color="black", linestyle=":",
                                                         linewidth=1.4)
    if points:
        _epsilon_axis(ax, [r["epsilon"] for r in points])
    else:
        ax.text(0.5, 0.5, "no DP defence in this grid", transform=ax.transAxes, ha="center", color="0.4")
    ys = [r["accuracy"] for r in points] + [v for v in (baseline, task.central) if v is not None]
    if ys:
        ax.set_ylim(max(0.0, min(ys) - 0.06), min(1.03, max(ys) + 0.06))
    ax.set(title=_mpl(task.name), xlabel="accountant ε (log scale)", ylabel="test accuracy")
    ax.grid(alpha=0.3)
    return {"task": task.name, "no_defence_accuracy": baseline, "centralised_accuracy": task.central,
            "points": [{"defence": r["defence"], "epsilon": r["epsilon"], "accuracy": r["accuracy"]}
                       for r in points]}


_LEAKAGE = (
    ("mia_agg_auc", "membership AUC\n(aggregate view)"),
    ("audit_epsilon_lb", f"audit ε lower bound\n({AUDIT_CONFIDENCE:.0%} confidence)"),
    ("inv_agg_psnr", "inversion PSNR, dB\n(aggregate view)"),
)


def _positions(task: _Task) -> tuple[dict[str, float], list[float], float | None]:
    """x of each defence: its accountant ε, or a point at "∞" (spread a little) for defences without DP."""
    eps = {r["defence"]: float(r["epsilon"]) for r in task.rows if (r["epsilon"] or 0) > 0}
    others = [r["defence"] for r in task.rows if r["defence"] not in eps]
    if not others:
        return eps, list(eps.values()), None
    infinity = max(eps.values(), default=1.0) * 6
    spread = 10 ** (0.035 * (np.arange(len(others)) - (len(others) - 1) / 2))
    spread_out = {d: infinity * float(s) for d, s in zip(others, spread, strict=True)}
    return eps | spread_out, list(eps.values()), infinity


def _leakage(tasks: Sequence[_Task], styles: Mapping[str, _Style]) -> _Figure | None:
    metrics = [m for m in _LEAKAGE if any(r[m[0]] is not None for t in tasks for r in t.rows)]
    if not metrics:
        return None
    fig = Figure(figsize=(1.0 + 5.2 * len(tasks), 1.2 + 3.0 * len(metrics)), layout="constrained")
    grid = fig.subplots(len(metrics), len(tasks), squeeze=False)
    legend: dict[str, Artist] = {}
    data = []
    for j, task in enumerate(tasks):
        positions, epsilons, infinity = _positions(task)
        series = {}
        for i, (key, label) in enumerate(metrics):
            ax = grid[i][j]
            series[key] = _draw_leakage(ax, task, key, positions, styles, legend)
            if ax.axison:
                _epsilon_axis(ax, epsilons, infinity)
                _leakage_references(ax, task, key, epsilons, infinity, legend, [p[key] for p in series[key]])
                ax.grid(alpha=0.3)
                ax.set_ylabel(label, fontsize=9)
            if i == 0:
                ax.set_title(_mpl(task.name))
            if i == len(metrics) - 1:
                ax.set_xlabel("accountant ε (log scale)")
        data.append({"task": task.name, "series": series})
    _figure_legend(fig, legend)
    shown = {"mia_agg_auc": "membership AUC on the released aggregate",
             "audit_epsilon_lb": "the canary audit's ε lower bound (below the diagonal, the accountant's ε, "
                                 "for a correct mechanism)",
             "inv_agg_psnr": "the aggregate-view inversion PSNR (the horizontal line is the prior guess)"}
    caption = (f"Leakage against the accountant's ε: {'; '.join(shown[key] for key, _ in metrics)}. Defences "
               "without DP sit at ∞, spread sideways so that equal values stay visible.")
    return _Figure("leakage", caption, _png(fig), {"x": "accountant epsilon (no DP: plotted at infinity)",
                                                   "tasks": data})


def _draw_leakage(ax: Axes, task: _Task, key: str, positions: Mapping[str, float],
                  styles: Mapping[str, _Style], legend: dict[str, Artist]) -> list[dict[str, Any]]:
    if key == "inv_agg_psnr" and not task.has_images:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no inversion probe\n(not an image task)", transform=ax.transAxes, ha="center",
                va="center", color="0.4")
        return []
    points = []
    for row in task.rows:
        x, y = positions.get(row["defence"]), row[key]
        if x is not None and y is not None:
            legend[row["defence"]] = _mark(ax, styles, row["defence"], x, y)
            points.append({"defence": row["defence"], "epsilon": row["epsilon"], key: y})
    return points


def _leakage_references(ax: Axes, task: _Task, key: str, epsilons: Sequence[float], infinity: float | None,
                        legend: dict[str, Artist], values: Sequence[float]) -> None:
    if key == "mia_agg_auc":
        legend["chance (AUC 0.5)"] = ax.axhline(0.5, color="0.5", linestyle="--", linewidth=1)
    elif key == "audit_epsilon_lb":
        if epsilons:
            hi = math.sqrt(max(epsilons) * infinity) if infinity else max(epsilons) * 1.8
            xs = np.geomspace(min(epsilons) / 1.8, hi, 50)
            (legend["accountant ε (y = x)"],) = ax.plot(xs, xs, color="0.3", linestyle="-.", linewidth=1)
        ceiling = _audit_ceiling(task.all_cells())
        if ceiling is not None:
            legend["audit ceiling (every guess right)"] = ax.axhline(ceiling, color="tab:red", linestyle=":",
                                                                     linewidth=1.2)
        # the diagonal runs off the top: the bounds, not the accountant's large ε, set the scale
        top = 1.2 * max([*values, ceiling or 0.0, 0.5])
        ax.set_ylim(-0.04 * top, top)
    elif key == "inv_agg_psnr":
        prior = next((r["inv_prior_psnr"] for r in task.rows if r["inv_prior_psnr"] is not None), None)
        if prior is not None:
            legend["prior guess (mean image)"] = ax.axhline(prior, color="0.5", linestyle="--", linewidth=1)


_KNOWN_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def _image_shape(length: int, dataset: str) -> tuple[int, int, int] | None:
    """(channels, height, width) of a flattened image (stored in C, H, W order)."""
    known = _KNOWN_SHAPES.get(dataset)
    if known and math.prod(known) == length:
        return known
    for channels in (1, 3):
        side = math.isqrt(length // channels)
        if length % channels == 0 and side * side * channels == length:
            return channels, side, side
    return None


def _picture(vector: Sequence[float], shape: tuple[int, int, int]) -> np.ndarray:
    image = np.clip(np.asarray(vector, dtype=np.float64).reshape(shape), 0.0, 1.0)
    return image[0] if shape[0] == 1 else image.transpose(1, 2, 0)


def _psnr_title(vector: Sequence[float], truth: Sequence[float]) -> str:
    mse = float(np.mean((np.asarray(vector, dtype=np.float64) - np.asarray(truth, dtype=np.float64)) ** 2))
    psnr = 10 * math.log10(1.0 / max(mse, 1e-12))
    # the stored images are rounded to 4 decimals, which caps what can be recomputed from them near 86 dB
    return "> 80 dB" if psnr > 80 else f"{psnr:.1f} dB"


def _tile(ax: Axes, vector: Sequence[float] | None, shape: tuple[int, int, int], title: str = "",
          text: str = "") -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_box_aspect(1)
    if vector is None:
        ax.set_facecolor("0.8")
        ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=7)
    else:
        ax.imshow(_picture(vector, shape), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_title(title, fontsize=7.5)


def _inversion_panel(task: _Task, index: int) -> _Figure | None:
    probes = [(str(r["defence"]), _get(task.first(r["defence"]), "inversion")) for r in task.rows]
    reference = next((p for _, p in probes if isinstance(p, Mapping) and p.get("truth")), None)
    if reference is None:
        return None
    truth = [list(t) for t in reference["truth"]]
    shape = _image_shape(len(truth[0]), task.dataset)
    if shape is None:
        return None
    batch, m = min(int(reference.get("batch") or 1), len(truth)), len(truth)
    labels = list(reference.get("truth_labels") or [""] * m)
    fig = Figure(figsize=(2.3 + 1.05 * (batch + m), 0.9 + 1.2 * (1 + len(probes))), layout="constrained")
    grid = fig.subplots(1 + len(probes), batch + 1 + m, squeeze=False,
                        gridspec_kw={"width_ratios": [1.0] * batch + [0.25] + [1.0] * m})
    for row in grid:
        row[batch].set_axis_off()  # the gap between the client view and the aggregate view
    for j in range(batch):
        _tile(grid[0][j], truth[j], shape, f"{'client view' if j == 0 else ''}\nlabel {labels[j]}")
    for i in range(m):
        header = "aggregate view" if i == 0 else ""
        _tile(grid[0][batch + 1 + i], truth[i], shape, f"{header}\nlabel {labels[i]}")
    grid[0][0].set_ylabel("original", rotation=0, ha="right", va="center", fontsize=8)
    rows = [_inversion_row(grid[k + 1], name, probe, task, shape, batch, truth) for k, (name, probe) in
            enumerate(probes)]
    seed = _get(task.first(probes[0][0]), "seed")
    fig.suptitle(_mpl(f"{task.name}: gradient inversion (seed {seed}, {_count(m, 'client')} × "
                      f"{_count(batch, 'example')})"),
                 fontsize=10)
    caption = (f"Gradient inversion on {task.name}: the probe's original images (top row), then per defence "
               "what the server rebuilt from one client's update (client view; grey where SecAgg or CKKS "
               f"hide it) and from the aggregate of {m} clients. Tile titles: PSNR of each image against its "
               "original.")
    slug = "".join(ch for ch in task.name.lower() if ch.isascii() and ch.isalnum())[:40]
    return _Figure(f"inversion_{index}_{slug}" if slug else f"inversion_{index}", caption, _png(fig),
                   {"task": task.name, "seed": seed, "image_shape": list(shape), "truth": truth,
                    "truth_labels": labels, "rows": rows})


def _inversion_row(axes: Sequence[Axes], name: str, probe: Any, task: _Task, shape: tuple[int, int, int],
                   batch: int, truth: Sequence[Sequence[float]]) -> dict[str, Any]:
    axes[0].set_ylabel(_mpl(textwrap.fill(name, 18)), rotation=0, ha="right", va="center", fontsize=8)
    client = _get(probe, "client") or {}
    aggregate = _get(probe, "aggregate") or {}
    hidden = isinstance(probe, Mapping) and client.get("observable") is False
    client_images = list(client.get("reconstruction") or []) if not hidden else []
    missing = _hidden(task.cells.get(name, ())).replace(" ", "\n") if hidden else "not run"
    for j in range(batch):
        image = client_images[j] if j < len(client_images) else None
        _tile(axes[j], image, shape, _psnr_title(image, truth[j]) if image is not None else "",
              missing if j == 0 else "")
    agg_images = list(aggregate.get("reconstruction") or [])
    for i in range(len(truth)):
        image = agg_images[i] if i < len(agg_images) else None
        _tile(axes[batch + 1 + i], image, shape, _psnr_title(image, truth[i]) if image is not None else "",
              "not run" if i == 0 and image is None else "")
    return {"defence": name,
            "client": {"observable": not hidden, "psnr": client.get("psnr"), "reconstruction": client_images},
            "aggregate": {"psnr": aggregate.get("psnr"), "reconstruction": agg_images}}


def _roc(tasks: Sequence[_Task], styles: Mapping[str, _Style]) -> _Figure | None:
    if not any(_get(c, "membership.aggregate.roc") for t in tasks for c in t.all_cells()):
        return None
    fig = Figure(figsize=(11.0, 1.2 + 4.3 * len(tasks)), layout="constrained")
    grid = fig.subplots(len(tasks), 2, squeeze=False)
    legend: dict[str, Artist] = {}
    data = [_draw_roc(grid[i][j], task, view, styles, legend)
            for i, task in enumerate(tasks) for j, view in enumerate(("aggregate", "client"))]
    _figure_legend(fig, legend)
    caption = ("Membership-inference ROC curves (log–log) of the strongest attack per defence, aggregate "
               "view (left) and client view (right), first seed. Dashed: chance; grey band: below the FPR "
               "resolution (fewer non-members than 1 / FPR), where only FPR 0 is measured.")
    return _Figure("roc", caption, _png(fig), {"curves": data})


def _draw_roc(ax: Axes, task: _Task, view: str, styles: Mapping[str, _Style],
              legend: dict[str, Artist]) -> dict[str, Any]:
    curves, hidden = [], []
    for row in task.rows:
        node = _get(task.first(row["defence"]), f"membership.{view}")
        if isinstance(node, Mapping) and node.get("observable") is False:
            hidden.append(row["defence"])
        elif isinstance(node, Mapping) and _get(node, "roc.fpr"):
            curves.append({"defence": row["defence"], "attack": node.get("best_attack"),
                           "auc": node.get("auc"), "fpr_resolution": node.get("fpr_resolution"),
                           **node["roc"]})
    ax.set_title(_mpl(f"{task.name}: {view} view"))
    steps = [r for c in curves if (r := _number(c["fpr_resolution"]))]
    floor = 0.5 * min(steps, default=2e-3)
    for c in curves:
        colour, _, _ = styles[c["defence"]]
        (legend[c["defence"]],) = ax.plot(np.maximum(c["fpr"], floor), np.maximum(c["tpr"], floor),
                                          color=colour, linewidth=1.4, drawstyle="steps-post")
    (legend["chance"],) = ax.plot([floor, 1.0], [floor, 1.0], color="0.5", linestyle="--", linewidth=1)
    if steps:
        legend["below FPR resolution"] = ax.axvspan(floor, max(steps), color="0.9", zorder=0)
    ax.set(xscale="log", yscale="log", xlim=(floor, 1.0), ylim=(floor, 1.05), xlabel="false-positive rate",
           ylabel="true-positive rate")
    ax.grid(alpha=0.3, which="major")
    if hidden:
        ax.text(0.98, 0.03, f"not plotted: {_count(len(hidden), 'defence')} hiding client updates",
                transform=ax.transAxes, ha="right", fontsize=7.5, color="0.3")
    seed = _get(task.first(task.rows[0]["defence"]), "seed") if task.rows else None
    return {"task": task.name, "view": view, "seed": seed, "hidden": hidden, "curves": curves}


def _figures(tasks: Sequence[_Task]) -> list[_Figure]:
    if not tasks:
        return []
    styles = _styles(tasks)
    figures = [_privacy_utility(tasks, styles), _leakage(tasks, styles)]
    figures += [_inversion_panel(t, i) for i, t in enumerate(tasks)]
    figures.append(_roc(tasks, styles))
    return [f for f in figures if f is not None]


# --------------------------------------------------------------------------------------------
# The document
# --------------------------------------------------------------------------------------------


def _document(results: Mapping[str, Any], tasks: Sequence[_Task], figures: Sequence[_Figure]) -> list[_Block]:
    seeds = len(results.get("seeds") or []) or 1
    cells = len(results.get("cells", []))
    blocks: list[_Block] = [
        _Heading(TITLE, 1),
        _Paragraph(f"{cells} cells (task × defence × seed), each trained, audited and attacked by "
                   f"{results.get('tool', 'fedshield audit')} "
                   f"(results format {results.get('format', '?')})."),
        _Heading("What was run"),
        _tasks_table(results, tasks),
        _defences_table(results, tasks),
        _Bullets(tuple(_run_lines(results))),
    ]
    warnings = _grid_warnings(results)
    if warnings:
        blocks += [_Heading("Warnings"), _Bullets(tuple(warnings))]
    for task in tasks:
        blocks += [_Heading(f"Results: {task.name}"), _results_table(task, seeds)]
    checks = results["checks"] if "checks" in results else expected_orderings(results)
    blocks += [_Heading("Expected orderings"),
               _Paragraph("Orderings a correct pipeline should show, checked on the measured figures "
                          "(✓ holds, ✗ does not, – reported only)."),
               _Checks(tuple(checks))]
    blocks += [_Heading("How to read this"), _Bullets(tuple(_caveats(results, tasks)))]
    if figures:
        blocks += [_Heading("Figures"), *figures]
    return blocks


_MARK = {True: "✓", False: "✗", None: "–"}


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------

_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*[]|"} | {"<": "&lt;", ">": "&gt;", "&": "&amp;",
                                                                   "\n": " "})


def _md(text: Any) -> str:
    """Plain text for Markdown: no markup, links or raw HTML can come out of a name."""
    return str(text).translate(_MD_SPECIAL)


def _md_table(table: _Table) -> list[str]:
    header = [f"{group} {label}" if group else label for group, label in table.columns]
    lines = ["| " + " | ".join(map(_md, header)) + " |",
             "|" + "|".join(["---"] + ["---:" if table.numeric else "---"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(map(_md, row)) + " |" for row in table.body]
    return lines + ([""] + [f"- {_md(n)}" for n in table.notes] if table.notes else [])


def _md_block(block: _Block) -> list[str]:
    if isinstance(block, _Heading):
        return ["#" * block.level + " " + _md(block.text)]
    if isinstance(block, _Paragraph):
        return [_md(block.text)]
    if isinstance(block, _Bullets):
        return [f"- {_md(item)}" for item in block.items]
    if isinstance(block, _Table):
        return _md_table(block)
    if isinstance(block, _Checks):
        lines = [f"- {_MARK.get(c.get('holds'), '–')} **{_md(c.get('task', ''))}**: "
                 f"{_md(c.get('claim', ''))} — {_md(c.get('detail', ''))}" for c in block.items]
        return lines or ["(no checks: the grid has no “none” defence)"]
    path = f"figures/{block.stem}"
    return [f"![{_md(block.caption)}]({path}.png)", "",
            f"*{_md(block.caption)}* Numbers: [{path}.json]({path}.json)"]


def _markdown(blocks: Sequence[_Block]) -> str:
    return "\n\n".join("\n".join(_md_block(b)) for b in blocks) + "\n"


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f; margin: 0; }
main { max-width: 1500px; margin: 0 auto; padding: 1.5rem 2rem 4rem; }
h1 { font-size: 1.7rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
.scroll { overflow-x: auto; margin: .8rem 0; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid #d6d6d6; padding: .2rem .4rem; }
th { background: #f2f2f4; font-weight: 600; text-align: center; }
td { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td:first-child { text-align: left; font-weight: 600; white-space: normal; min-width: 8em; }
td.hidden { text-align: center; color: #666; background: #eef0f3; }
table.text td { text-align: left; white-space: normal; font-weight: normal; }
tbody tr:nth-child(even) { background: #fafafa; }
ul.notes { font-size: 12.5px; color: #444; }
ul.checks { list-style: none; padding-left: 0; }
ul.checks li { margin: .45rem 0; }
.mark { display: inline-block; width: 1.4em; font-weight: 700; }
.holds-true .mark { color: #1a7f37; }
.holds-false .mark { color: #cf222e; }
.holds-none .mark { color: #666; }
.detail { display: block; margin-left: 1.4em; color: #555; font-size: 12.5px; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 13px; max-width: 1100px; }
"""

# sets on <body> what a headless browser test reads back: the images decoded, and the tables
_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (img) { return img.complete && img.naturalWidth > 0; });
  document.body.setAttribute("data-images-loaded", String(loaded.length));
  document.body.setAttribute("data-images-total", String(images.length));
  document.body.setAttribute("data-tables", String(document.querySelectorAll("table").length));
});
"""


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def _html_table(table: _Table) -> str:
    grouped = any(group for group, _ in table.columns)
    if grouped:
        top, k = [], 0
        for group, span in _runs(g for g, _ in table.columns):
            top.append(f'<th colspan="{span}">{_esc(group)}</th>' if group else
                       f'<th rowspan="2">{_esc(table.columns[k][1])}</th>')
            k += span
        second = "".join(f"<th>{_esc(label)}</th>" for group, label in table.columns if group)
        head = f"<tr>{''.join(top)}</tr><tr>{second}</tr>"
    else:
        head = "<tr>" + "".join(f"<th>{_esc(label)}</th>" for _, label in table.columns) + "</tr>"
    body = "".join("<tr>" + "".join(_html_cells(row)) + "</tr>" for row in table.body)
    css = "" if table.numeric else ' class="text"'
    notes = "".join(f"<li>{_esc(n)}</li>" for n in table.notes)
    return (f'<div class="scroll"><table{css}><thead>{head}</thead><tbody>{body}</tbody></table></div>'
            + (f'<ul class="notes">{notes}</ul>' if notes else ""))


def _html_cells(row: Sequence[str]) -> list[str]:
    """<td>s of a row; "hidden (…)" and the "hidden" cells after it become one cell across their columns."""
    cells: list[str] = []
    j = 0
    while j < len(row):
        span = 1
        if row[j].startswith("hidden ("):
            while j + span < len(row) and row[j + span] == "hidden":
                span += 1
        cells.append(f'<td colspan="{span}" class="hidden">{_esc(row[j])}</td>' if span > 1 else
                     f"<td>{_esc(row[j])}</td>")
        j += span
    return cells


def _runs(groups: Iterable[str]) -> list[tuple[str, int]]:
    """(group, span) of consecutive equal group names; an ungrouped column ("") is a run of its own."""
    out: list[tuple[str, int]] = []
    for g in groups:
        if out and g and out[-1][0] == g:
            out[-1] = (g, out[-1][1] + 1)
        else:
            out.append((g, 1))
    return out


def _html_check(check: Mapping[str, Any]) -> str:
    holds = check.get("holds")
    css = {True: "holds-true", False: "holds-false", None: "holds-none"}.get(holds, "holds-none")
    return (f'<li class="{css}"><span class="mark">{_MARK.get(holds, "–")}</span>'
            f"<strong>{_esc(check.get('task', ''))}</strong>: {_esc(check.get('claim', ''))}"
            f'<span class="detail">{_esc(check.get("detail", ""))}</span></li>')


def _html_block(block: _Block) -> str:
    if isinstance(block, _Heading):
        return f"<h{block.level}>{_esc(block.text)}</h{block.level}>"
    if isinstance(block, _Paragraph):
        return f"<p>{_esc(block.text)}</p>"
    if isinstance(block, _Bullets):
        return "<ul>" + "".join(f"<li>{_esc(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, _Table):
        return _html_table(block)
    if isinstance(block, _Checks):
        return '<ul class="checks">' + "".join(_html_check(c) for c in block.items) + "</ul>"
    uri = "data:image/png;base64," + base64.b64encode(block.png).decode("ascii")
    return (f'<figure id="{_esc(block.stem)}"><img src="{uri}" alt="{_esc(block.caption)}">'
            f"<figcaption>{_esc(block.caption)}</figcaption></figure>")


def _html(blocks: Sequence[_Block]) -> str:
    csp = (f"default-src 'none'; img-src data:; style-src {_csp_hash(_STYLE)}; "
           f"script-src {_csp_hash(_SCRIPT)}; base-uri 'none'; form-action 'none'")
    body = "\n".join(_html_block(b) for b in blocks)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_esc(TITLE)}</title>\n<style>{_STYLE}</style>\n</head>\n"
            f"<body>\n<main>\n{body}\n</main>\n"
            f"<script>{_SCRIPT}</script>\n</body>\n</html>\n")


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def write_reports(results: Mapping[str, Any], out_dir: Path) -> None:
    """Write ``report.md``, ``report.html`` and ``figures/`` (PNGs, with the numbers they plot as JSON)."""
    out = Path(out_dir)
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    tasks = _tasks(results)
    figures = _figures(tasks)
    for figure in figures:
        (figures_dir / f"{figure.stem}.png").write_bytes(figure.png)
        (figures_dir / f"{figure.stem}.json").write_text(
            json.dumps(figure.data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    blocks = _document(results, tasks, figures)
    (out / "report.md").write_text(_markdown(blocks), encoding="utf-8")
    (out / "report.html").write_text(_html(blocks), encoding="utf-8")
