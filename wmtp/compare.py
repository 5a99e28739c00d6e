"""`wmtp compare`: the numbers of several stages side by side, from run dirs or from MLflow.

A *stage* is read as its metric history (`{key: [(step, value), …]}`), its early-stopping reason, its
`eval/summary.json` (pass@k) and its token-weight histogram PNG. Run dirs give these through
`metrics.jsonl`, `eval/summary.json`, `spec.yaml` and `plots/token_weights.png`, so nothing needs a
server; an MLflow experiment gives the same through `get_metric_history`, the run's tags and its
`plots/` artifacts. Every row is computed from that history alone:

- steps: the largest step logged;
- tokens seen: the last `tokens` value (the loop's running count of input tokens, all ranks); a run
  written before the loop logged `tokens` shows none, and its `val/ce`-vs-tokens curve is left out;
- best / final: the minimum / the last value of `val/ce`, `val/ce/head_k` and `val/loss`;
- tokens/s: the mean of `tokens_per_s` over the log intervals;
- early stopping: `stopped at step N: reason` from `early_stopping/reason`, `ran to the end` when
  `early_stopping/*` was logged without a stop, `off` when it never was;
- pass@k: every `pass@k` of the summary, with its 95 % interval from `ci95: {"pass@k": [low, high]}`
  (or `pass@k_ci95_low` / `_high` keys) when the summary has one.

No torch here; matplotlib is imported only to draw the plots, MLflow only for `--mlflow`.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from wmtp.errors import WmtpError

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = Path("eval") / "summary.json"
WEIGHTS_PNG = Path("plots") / "token_weights.png"


class CompareError(WmtpError):
    """A path given to `wmtp compare` is not a run or stage dir, or one of its files cannot be read."""


@dataclass
class Stage:
    """One stage's numbers, whichever source they came from."""

    label: str  # `<run dir>/<stage>` or `<experiment>/<stage> (<run id>)`
    stage: str
    source: str  # the stage dir, or the MLflow run id
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    early_stopping_reason: Optional[str] = None
    early_stopping_step: Optional[int] = None
    summary: Optional[dict] = None  # eval/summary.json
    weights_png: Optional[bytes] = None  # plots/token_weights.png


# ---------------------------------------------------------------- reading run dirs


def is_stage_dir(path: Path) -> bool:
    return (path / METRICS_FILE).is_file()


def find_stage_dirs(path: Path) -> list[Path]:
    """`path` itself when it is a stage dir, else its stage subdirs in training order (spec.yaml's stage
    order is not recorded, so the order is that of the stages' first metrics line being written)."""
    if not path.is_dir():
        raise CompareError(f"{path}: no such directory (expected a run dir or a stage dir holding {METRICS_FILE})")
    if is_stage_dir(path):
        return [path]
    stages = [d for d in path.iterdir() if d.is_dir() and is_stage_dir(d)]
    if not stages:
        raise CompareError(f"{path}: neither a stage dir nor a run dir: no {METRICS_FILE} in it or its subdirs")
    return sorted(stages, key=lambda d: ((d / METRICS_FILE).stat().st_mtime_ns, d.name))


def read_metrics(path: Path) -> tuple[dict[str, list[tuple[int, float]]], Optional[str], Optional[int]]:
    """metrics.jsonl → (history per numeric key, early-stopping reason, its step)."""
    history: dict[str, list[tuple[int, float]]] = {}
    reason = reason_step = None
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CompareError(f"{path}: cannot be read ({exc})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise CompareError(f"{path}:{number}: not a JSON object ({exc})") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("step"), int):
            raise CompareError(f"{path}:{number}: expected a JSON object with an integer 'step'")
        step = entry["step"]
        for key, value in entry.items():
            if key == "step":
                continue
            if key == "early_stopping/reason":
                reason, reason_step = str(value), step
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                history.setdefault(key, []).append((step, float(value)))
    return history, reason, reason_step


def read_stage_dir(stage_dir: Path) -> Stage:
    """A stage dir's metrics, eval summary and token-weight histogram."""
    history, reason, reason_step = read_metrics(stage_dir / METRICS_FILE)
    stage = read_spec_stage(stage_dir) or stage_dir.name
    summary = None
    summary_path = stage_dir / SUMMARY_FILE
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise CompareError(f"{summary_path}: cannot be read as JSON ({exc})") from None
        if not isinstance(summary, dict):
            raise CompareError(f"{summary_path}: expected a JSON object")
    png = stage_dir / WEIGHTS_PNG
    label = f"{stage_dir.resolve().parent.name}/{stage_dir.name}"
    return Stage(
        label, stage, str(stage_dir), history, reason, reason_step, summary, png.read_bytes() if png.is_file() else None
    )


def read_spec_stage(stage_dir: Path) -> Optional[str]:
    """The `stage:` line of spec.yaml (a line scan: the file is ours, and YAML parsing is not needed)."""
    spec = stage_dir / "spec.yaml"
    if not spec.is_file():
        return None
    match = re.search(r"^stage:\s*(\S+)\s*$", spec.read_text(errors="replace"), re.MULTILINE)
    return match.group(1) if match else None


def read_paths(paths: list[Path]) -> list[Stage]:
    stages = [read_stage_dir(d) for path in paths for d in find_stage_dirs(path)]
    return dedupe_labels(stages)


def dedupe_labels(stages: list[Stage]) -> list[Stage]:
    """Two stages with one label (the same dir twice, or run dirs of one name) get ` #2`, ` #3`."""
    seen: dict[str, int] = {}
    for s in stages:
        seen[s.label] = seen.get(s.label, 0) + 1
        if seen[s.label] > 1:
            s.label = f"{s.label} #{seen[s.label]}"
    return stages


# ---------------------------------------------------------------- reading MLflow


def read_mlflow(experiment: str, filter_string: str = "", uri: Optional[str] = None) -> list[Stage]:
    """The training runs of MLflow experiment `experiment` (those tagged with a `stage`), oldest first."""
    import tempfile

    from mlflow.tracking import MlflowClient

    from wmtp.tracking import redact_uri, resolve_tracking_uri

    uri = resolve_tracking_uri(uri)
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise CompareError(f"MLflow experiment {experiment!r} not found at {redact_uri(uri)}")
    try:
        runs = client.search_runs(
            [found.experiment_id], filter_string=filter_string, order_by=["attributes.start_time ASC"]
        )
    except Exception as exc:  # MLflow raises its own exception types for a bad filter
        raise CompareError(f"--filter {filter_string!r}: {str(exc).splitlines()[0]}") from None
    stages = []
    for run in runs:
        tags = run.data.tags
        if "stage" not in tags:  # a job's run (its stages' runs are nested under it), an evaluation run, …
            continue
        history = {
            key: [
                (m.step, float(m.value))
                for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
            ]
            for key in run.data.metrics
        }
        step = tags.get("early_stopping.step")
        png = None
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = Path(client.download_artifacts(run.info.run_id, str(WEIGHTS_PNG), tmp))
                png = local.read_bytes()
            except Exception:  # no histogram for this stage (unweighted objective): nothing to show
                png = None
        label = f"{tags.get('experiment', experiment)}/{tags['stage']} ({run.info.run_id[:8]})"
        stages.append(
            Stage(
                label,
                tags["stage"],
                run.info.run_id,
                history,
                tags.get("early_stopping.reason"),
                int(step) if step and step.isdigit() else None,
                summary_from_metrics(history),
                png,
            )
        )
    if not stages:
        raise CompareError(
            f"MLflow experiment {experiment!r} at {redact_uri(uri)} has no training runs"
            + (f" matching {filter_string!r}" if filter_string else "")
        )
    return dedupe_labels(stages)


def summary_from_metrics(history: dict) -> Optional[dict]:
    """pass@k back from the stage run's `eval/<benchmark>/pass_at_k[_ci95_low|_high]` metrics."""
    summary: dict = {}
    for key, points in history.items():
        match = re.fullmatch(r"eval/([^/]+)/pass_at_(\d+)(_ci95_low|_ci95_high)?", key)
        if not match or not points:
            continue
        summary["benchmark"] = match.group(1)
        name = f"pass@{match.group(2)}"
        if match.group(3):
            summary.setdefault("ci95", {}).setdefault(name, [math.nan, math.nan])
            summary["ci95"][name][0 if match.group(3) == "_ci95_low" else 1] = points[-1][1]
        else:
            summary[name] = points[-1][1]
    return summary or None


# ---------------------------------------------------------------- the table


def n_heads(stages: list[Stage]) -> int:
    heads = [int(m.group(1)) for s in stages for k in s.history if (m := re.fullmatch(r"val/ce/head_(\d+)", k))]
    return max(heads, default=0)


def pass_at_k(summary: Optional[dict]) -> dict[str, tuple[float, Optional[float], Optional[float]]]:
    """{"pass@k": (value, ci low, ci high)} from a summary, whichever way it writes the interval."""
    if not summary:
        return {}
    found = {}
    ci = summary.get("ci95") if isinstance(summary.get("ci95"), dict) else {}
    for key, value in summary.items():
        if not re.fullmatch(r"pass@\d+", key) or not isinstance(value, (int, float)):
            continue
        low = high = None
        if isinstance(ci.get(key), (list, tuple)) and len(ci[key]) == 2:
            low, high = ci[key]
        for suffix_low, suffix_high in (("_ci95_low", "_ci95_high"), ("_ci_low", "_ci_high")):
            if f"{key}{suffix_low}" in summary:
                low, high = summary[f"{key}{suffix_low}"], summary.get(f"{key}{suffix_high}")
        found[key] = (float(value), low, high)
    return dict(sorted(found.items(), key=lambda kv: int(kv[0][5:])))


def early_stopping_outcome(s: Stage) -> str:
    if s.early_stopping_reason:
        return f"stopped at step {s.early_stopping_step}: {s.early_stopping_reason}"
    if "early_stopping/stopped" in s.history:
        return "ran to the end"
    return "off"


def row(s: Stage, heads: int) -> dict:
    """One stage's numbers: None where the stage has no such metric (the critic has no `val/ce`)."""
    h = s.history

    def best(key):
        return min(v for _, v in h[key]) if h.get(key) else None

    def final(key):
        return h[key][-1][1] if h.get(key) else None

    speeds = [v for _, v in h.get("tokens_per_s", [])]
    out = {
        "stage": s.label,
        "steps": max((step for points in h.values() for step, _ in points), default=0),
        "tokens": final("tokens"),
        "val/ce best": best("val/ce"),
        "val/ce final": final("val/ce"),
    }
    for k in range(1, heads + 1):
        out[f"val/ce/head_{k} best"] = best(f"val/ce/head_{k}")
        out[f"val/ce/head_{k} final"] = final(f"val/ce/head_{k}")
    out["val/loss best"] = best("val/loss")
    out["val/loss final"] = final("val/loss")
    for key, (value, low, high) in pass_at_k(s.summary).items():
        out[key] = value
        out[f"{key} ci95 low"], out[f"{key} ci95 high"] = low, high
    out["tokens/s"] = sum(speeds) / len(speeds) if speeds else None
    out["early stopping"] = early_stopping_outcome(s)
    out["source"] = s.source
    return out


def table(stages: list[Stage]) -> list[dict]:
    """Rows grouped by stage name (in the order stages first appear), so like compares with like."""
    heads = n_heads(stages)
    order = list(dict.fromkeys(s.stage for s in stages))
    rows = [row(s, heads) for s in sorted(stages, key=lambda s: order.index(s.stage))]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return [{c: r.get(c) for c in columns} for r in rows]


def fmt(value, column: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if column in ("steps", "tokens"):
        return f"{int(value):,}"
    if column == "tokens/s":
        return f"{value:,.0f}"
    return f"{value:.4f}"


def pass_cell(r: dict, key: str) -> str:
    low, high = r.get(f"{key} ci95 low"), r.get(f"{key} ci95 high")
    text = fmt(r.get(key))
    return (
        f"{text} [{low:.3f}, {high:.3f}]" if low is not None and high is not None and r.get(key) is not None else text
    )


def display_rows(rows: list[dict], per_head: bool) -> tuple[list[str], list[list[str]]]:
    """Header and cells: pass@k with its interval in one cell; per-head CE as `h1 / h2 / …` when asked."""
    if not rows:
        return [], []
    passes = [c for c in rows[0] if re.fullmatch(r"pass@\d+", c)]
    heads = sorted({int(m.group(1)) for c in rows[0] if (m := re.fullmatch(r"val/ce/head_(\d+) best", c))})
    header = ["stage", "steps", "tokens", "val/ce best", "val/ce final"]
    if per_head and heads:
        header += ["val/ce/head_k best", "val/ce/head_k final"]
    header += ["val/loss best", "val/loss final", *[f"{p} [95% CI]" for p in passes], "tokens/s", "early stopping"]
    cells = []
    for r in rows:
        line = [
            r["stage"],
            fmt(r["steps"], "steps"),
            fmt(r["tokens"], "tokens"),
            fmt(r["val/ce best"]),
            fmt(r["val/ce final"]),
        ]
        if per_head and heads:
            for which in ("best", "final"):
                values = [r.get(f"val/ce/head_{k} {which}") for k in heads]
                line.append(" / ".join(f"{v:.3f}" for v in values) if any(v is not None for v in values) else "—")
        line += [
            fmt(r["val/loss best"]),
            fmt(r["val/loss final"]),
            *[pass_cell(r, p) for p in passes],
            fmt(r["tokens/s"], "tokens/s"),
            r["early stopping"],
        ]
        cells.append(line)
    return header, cells


def text_table(rows: list[dict]) -> str:
    """The console table (per-head CE left to the report: it would not fit a terminal)."""
    header, cells = display_rows(rows, per_head=False)
    widths = [max(len(x) for x in col) for col in zip(header, *cells)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *cells]]
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    header, cells = display_rows(rows, per_head=True)
    escape = lambda x: x.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(escape(x) for x in line) + " |" for line in cells]
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    """Every column at full precision; empty where a stage has no value."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)


# ---------------------------------------------------------------- plots and reports


def tokens_at(s: Stage, step: int) -> Optional[float]:
    """Tokens seen at `step`, interpolated linearly between the logged `tokens` points (validation
    steps need not be log steps); None before the first point or without a `tokens` history."""
    points = s.history.get("tokens")
    if not points or step < points[0][0]:
        return None
    for (s0, t0), (s1, t1) in zip(points, points[1:]):
        if s0 <= step <= s1:
            return t0 + (t1 - t0) * (step - s0) / (s1 - s0) if s1 != s0 else t1
    return points[-1][1] if step == points[-1][0] else None


def plot_val_ce(stages: list[Stage], path: Path, against: str) -> Optional[Path]:
    """`val/ce` of every stage that has it, overlaid, against optimizer step or tokens seen."""
    curves = []
    for s in stages:
        points = s.history.get("val/ce", [])
        xs = [step if against == "step" else tokens_at(s, step) for step, _ in points]
        kept = [(x, v) for x, (_, v) in zip(xs, points) if x is not None]
        if kept:
            curves.append((s.label, kept))
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")  # headless: no display where reports are made
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, kept in curves:
        ax.plot([x for x, _ in kept], [v for _, v in kept], marker="o", label=label)
    ax.set_xlabel("optimizer step" if against == "step" else "tokens seen")
    ax.set_ylabel("val/ce (unweighted MTP cross-entropy)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")


@dataclass
class Report:
    rows: list[dict]
    out_dir: Path
    markdown: Path
    html: Path
    csv: Path
    plots: list[Path]


def write_report(stages: list[Stage], out_dir: Path) -> Report:
    """compare.csv, report.md (PNGs beside it), report.html (the same, images inline as data: URIs)."""
    rows = table(stages)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, html_path = out_dir / "compare.csv", out_dir / "report.md", out_dir / "report.html"
    write_csv(rows, csv_path)
    curves = [
        p
        for p in (
            plot_val_ce(stages, out_dir / "val_ce_vs_step.png", "step"),
            plot_val_ce(stages, out_dir / "val_ce_vs_tokens.png", "tokens"),
        )
        if p is not None
    ]
    weights = []  # (label, png) of the stages whose run wrote a token-weight histogram
    for s in stages:
        if s.weights_png:
            png = out_dir / f"token_weights-{safe_name(s.label)}.png"
            png.write_bytes(s.weights_png)
            weights.append((s.label, png))

    title = "wmtp compare: " + ", ".join(s.label for s in stages)
    md = [f"# {title}", "", markdown_table(rows), ""]
    md += [f"![{p.stem}]({p.name})" for p in curves]
    if weights:
        md += ["", "## Token-weight histograms", ""] + [f"![{label}]({png.name})" for label, png in weights]
    md_path.write_text("\n".join(md) + "\n")

    def img(png: Path, alt: str) -> str:
        data = base64.b64encode(png.read_bytes()).decode()
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'

    header, cells = display_rows(rows, per_head=True)
    table_html = (
        "<table><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in header)
        + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>" for line in cells)
        + "</table>"
    )
    body = [f"<h1>{html.escape(title)}</h1>", table_html, "<div>"] + [img(p, p.stem) for p in curves] + ["</div>"]
    if weights:
        body += ["<h2>Token-weight histograms</h2>", '<div class="side">']
        body += [
            f"<figure>{img(png, label)}<figcaption>{html.escape(label)}</figcaption></figure>" for label, png in weights
        ]
        body += ["</div>"]
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:2px 6px;text-align:right}td:first-child{text-align:left}.side{display:flex;flex-wrap:wrap}"
        "figure{margin:0 1em 1em 0}img{max-width:100%}"
    )
    html_path.write_text(
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )
    return Report(rows, out_dir, md_path, html_path, csv_path, curves + [png for _, png in weights])
