"""`gpusim report`: a rec.json as a page a person reads in a minute.

`write_report(rec, out_dir)` writes report.md with four PNG plots beside it (pareto.png,
waits.png, headroom.png, importances.png) and report.html: one self-contained file with the same
content (the PNGs as data: URIs, inline CSS, no script, nothing fetched).

- Same rec.json, same bytes: nothing reads a clock, matplotlib draws under its default style
  whatever the user's matplotlibrc says, and the PNGs carry no software tag or timestamp.
- Nothing half-written: every file is rendered in memory, written into a temporary folder inside
  out_dir and moved into place; a folder that cannot be written is one `gpusim.InputError`.
- Censored waits: a task that gave up after `max_wait_time` never acquired the lock. The wait
  curves show P(acquired within t) over all tasks of a type, so a curve ends at the acquired
  share, and the give-ups are marked at `max_wait_time` as give-ups, never drawn as a rise
  there as if they had acquired.

matplotlib is imported inside the functions that draw, so importing this module stays cheap.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from gpusim import InputError

from advisor.recommendation import Estimate, Gate, HeadroomRow, Recommendation, WaitCurve

PLOTS = ("pareto.png", "waits.png", "headroom.png", "importances.png")
FILES = ("report.md", "report.html") + PLOTS
# matplotlib settings on top of its default style: fixed fonts and sizes, no hash randomness
_RC = {"svg.hashsalt": "gpusim-report", "font.family": "DejaVu Sans", "font.size": 9,
       "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 100, "savefig.dpi": 100}
_OBJECTIVES = ("wait_mean_s", "redis_cpu_utilization")
_CONFIG_COLOR = {"baseline": "C0", "recommended": "C1", "nearest": "C3"}
_CONFIG_LABEL = {"baseline": "today (baseline)", "recommended": "recommended",
                 "nearest": "nearest (fails a gate)"}

Block = tuple  # ("h1"|"h2"|"p", text) ("ul", items) ("code", lang, text)
#                ("table", header, rows) ("img", file, alt)


def write_report(rec: Recommendation, out_dir: str | Path) -> list[Path]:
    """Write report.md, report.html and the PNG plots into `out_dir` (created if missing);
    return their paths. Raises InputError naming out_dir when it cannot be written."""
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)  # before seconds of drawing
    pngs = render_plots(rec)
    blocks = report_blocks(rec)
    files = {"report.md": render_markdown(blocks).encode("utf-8"),
             "report.html": render_html(blocks, pngs, _title(rec)).encode("utf-8"), **pngs}
    return _write_all(out_dir, files)


# ---------------------------------------------------------------- writing


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


def _check_out_dir(out_dir: Path) -> None:
    """Fail early on a folder that cannot be written: its nearest existing ancestor must be a
    writable folder, and no report file's name may be taken by a folder."""
    p = out_dir
    while not p.exists() and p.parent != p:
        p = p.parent
    if not p.is_dir():
        what = "exists and is not a folder" if p == out_dir else f"{p} is not a folder"
        raise InputError(what, file=str(out_dir))
    if not os.access(p, os.W_OK | os.X_OK):
        raise InputError(f"cannot write into {p}: permission denied", file=str(out_dir))
    for name in FILES:
        target = out_dir / name
        if target.exists() and not target.is_file():
            raise InputError("exists and is not a file", file=str(target))


def _make_dir(out_dir: Path) -> bool:
    """Create out_dir if needed; True when this call created it."""
    if out_dir.is_dir():
        return False
    try:
        out_dir.mkdir(parents=True)
    except FileExistsError:
        raise InputError("exists and is not a folder", file=str(out_dir)) from None
    except OSError as err:
        raise InputError(f"cannot create the report folder: {_reason(err)}",
                         file=str(out_dir)) from None
    return True


def _write_all(out_dir: Path, files: dict[str, bytes]) -> list[Path]:
    created = _make_dir(out_dir)
    tmp: Path | None = None
    done = False
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out_dir))
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        for name in files:
            os.replace(tmp / name, out_dir / name)
        done = True
    except OSError as err:
        raise InputError(f"cannot write the report: {_reason(err)}", file=str(out_dir)) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not done and created:
            shutil.rmtree(out_dir, ignore_errors=True)
    return [out_dir / name for name in files]


# ---------------------------------------------------------------- numbers as text


def _num(v: float | None, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.4g}{unit}"


def _secs(v: float | None) -> str:
    """Seconds; a day or more in days, long spans without exponents."""
    if v is None or not math.isfinite(v):
        return "n/a"
    if abs(v) >= 86_400:
        return f"{v / 86_400:.4g} d"
    return f"{v:,.0f} s" if abs(v) >= 10_000 else f"{v:.4g} s"


def _pct(v: float | None, signed: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    s = f"{v * 100:+.3g}" if signed else f"{v * 100:.3g}"
    return s + "%"


def _signed_pct(v: float | None) -> str:
    return _pct(v, signed=True)


def _value_formatter(name: str) -> Callable[[float | None], str]:
    """Seconds for *_s, percent for rates, shares, reductions and utilisations."""
    if name.endswith("_per_s"):
        return lambda v: _num(v, "/s")
    if name.endswith("_s"):
        return _secs
    if any(w in name for w in ("rate", "share", "reduction", "increase", "utilization",
                                "per_acquisition", "cpu_peak")):
        return _pct
    return _num


def _interval(ci: tuple[float, float] | None, f: Callable[[float | None], str]) -> str:
    return "n/a" if ci is None else f"[{f(ci[0])}, {f(ci[1])}]"


def _estimate(e: Estimate | None, f: Callable[[float | None], str]) -> str:
    if e is None:
        return "n/a"
    return f(e.mean) if e.ci95 is None else f"{f(e.mean)} {_interval(e.ci95, f)}"


def _settings(g: dict[str, Any]) -> str:
    """One line per config: `poll 0.5 s, cap 5 s, wait 300 s, TTL 600 s, backoff, events`."""
    parts = []
    for key, label in (("poll_interval", "poll"), ("max_poll_interval", "cap"),
                       ("max_wait_time", "wait"), ("lock_timeout", "TTL"),
                       ("fallback_timeout", "fallback")):
        if key in g:
            parts.append(f"{label} {_secs(g[key])}")
    for key, label in (("exponential_backoff", "backoff"), ("use_event_driven", "events")):
        if key in g:
            parts.append(label if g[key] else f"no {label}")
    return ", ".join(parts)


def _title(rec: Recommendation) -> str:
    return f"gpu_lock recommendation: {rec.status.upper()}"


# ---------------------------------------------------------------- the content, once


def report_blocks(rec: Recommendation) -> list[Block]:
    """The report as blocks that both the Markdown and the HTML render."""
    return [("h1", _title(rec)), *_verdict(rec), *_gates(rec), *_explanation(rec),
            *_metrics(rec), *_headroom(rec), *_waits(rec), *_pareto(rec), *_candidates(rec),
            *_importances(rec), *_what_if(rec), *_inputs(rec)]


def _verdict(rec: Recommendation) -> list[Block]:
    tr = rec.inputs.trace
    out: list[Block] = [("p", f"Trace `{tr.path}`: {tr.tasks} tasks over "
                              f"{tr.span_s / 3600:.3g} h ({', '.join(tr.task_types)}), against "
                              f"today's config `{rec.inputs.baseline.get('source', '?')}`.")]
    if rec.status == "recommended" and rec.recommended is not None:
        r = rec.recommended
        changed = ", ".join(f"`{k}`" for k in r.changed) or "none"
        out += [("p", f"**Recommended** (trial {r.trial}): every gate passes at the conservative "
                      f"end of its 95% interval, on seeds the search never used. Paste this "
                      f"block into config.yml in place of `gpu_lock` (changed: {changed}):"),
                ("code", "yaml", r.yaml.rstrip("\n"))]
        return out
    binding = ", ".join(f"`{g}`" for g in rec.binding_gates) or "none"
    out.append(("p", f"**Infeasible**: no searched config passes every gate at the conservative "
                     f"end of its 95% interval. Binding gates: {binding}. Keep today's config; "
                     f"the sections below say what stands in the way."))
    if rec.nearest is not None:
        out.append(("p", f"Nearest config (trial {rec.nearest.trial}, not to be rolled out): "
                          f"{_settings(rec.nearest.gpu_lock)}."))
    return out


def _margin(f: Callable[[float | None], str], v: float | None) -> str:
    """A difference of two percentages is in percentage points."""
    if f is _pct and v is not None and math.isfinite(v):
        return f"{v * 100:+.3g} pp"
    return f(v)


def _gate_rows(gates: list[Gate]) -> list[tuple[str, ...]]:
    rows = []
    for g in gates:
        f = _value_formatter(g.name)
        rows.append((f"`{g.name}`", f(g.value), _interval(g.ci95, f), f(g.conservative),
                     f"{g.op} {f(g.threshold)}", _margin(f, g.margin),
                     "PASS" if g.passed else "FAIL"))
    return rows


def _gates(rec: Recommendation) -> list[Block]:
    s = rec.inputs.search
    which = "recommended" if rec.status == "recommended" else "nearest"
    head = ("gate", "value", "95% interval", "judged at", "threshold", "margin", "result")
    if not rec.gates:
        return [("h2", "Gates"), ("p", "No config was checked (the study has no complete "
                                       "trial), so no gate was judged.")]
    return [("h2", "Gates"),
            ("p", f"The {which} config against today's, paired over {s.check_replications} "
                  f"replications on check seed {s.check_seed} (never used by the search). A gate "
                  f"passes when the end of its 95% interval nearest to failing (`judged at`) "
                  f"meets the threshold; margin is the point value's distance beyond it."),
            ("table", head, _gate_rows(rec.gates))]


def _explanation(rec: Recommendation) -> list[Block]:
    if not rec.explanation:
        return []
    return [("h2", "Why"), ("ul", list(rec.explanation))]


def _metrics(rec: Recommendation) -> list[Block]:
    base = rec.metrics.get("baseline", {})
    cand = rec.metrics.get("candidate", {})
    name = "recommended" if rec.status == "recommended" else "nearest"
    rows = []
    for key in sorted(set(base) | set(cand)):
        f = _value_formatter(key)
        rows.append((f"`{key}`", _estimate(base.get(key), f), _estimate(cand.get(key), f)))
    if not rows:
        return []
    return [("h2", "Metrics (check seeds, mean and 95% interval)"),
            ("table", ("metric", "today", name), rows)]


def _headroom_row(name: str, r: HeadroomRow) -> tuple[str, ...]:
    return (name, f"{r.tasks:.0f}", _secs(r.wait_mean_s), _secs(r.held_mean_s),
            _secs(r.free_mean_s), _pct(r.free_share), _pct(r.timeout_rate))


def _headroom(rec: Recommendation) -> list[Block]:
    h = rec.headroom
    rows = [_headroom_row("all tasks", h.overall)]
    rows += [_headroom_row(f"`{k}`", v) for k, v in sorted(h.by_task_type.items())]
    notes = []
    if h.best_wait_reduction_within_timeout_gate is not None:
        notes.append(f"Largest mean-wait cut of any searched config whose timeout rate meets its "
                     f"gate: {_pct(h.best_wait_reduction_within_timeout_gate)}.")
    if h.least_timeout_rate_at_wait_gate is not None:
        notes.append(f"Smallest timeout rate of any searched config that reaches the wait gate: "
                     f"{_pct(h.least_timeout_rate_at_wait_gate)}.")
    head = ("task type", "tasks", "mean wait", "key held by another task", "key free",
            "free share", "timeout rate")
    return [("h2", "Headroom (today's config)"),
            ("p", "Each task's lock wait split into time its key was held by another task "
                  "(queueing for a busy GPU: a lock setting shortens it only by shortening the "
                  "queue, or by timing tasks out) and time the key was free while it waited "
                  "(notice delay, lost races, lost wake-ups: what a lock setting wins back "
                  "directly). The near-ideal lock under Why measures what is possible."),
            ("table", head, rows), *([("p", " ".join(notes))] if notes else []),
            ("img", "headroom.png", "Held vs free lock wait per task type, today's config")]


def _waits(rec: Recommendation) -> list[Block]:
    rows = [(f"`{c.task_type}`", _CONFIG_LABEL[c.config], str(c.tasks), _pct(c.acquired_share),
             _pct(c.timeout_share), _secs(c.censored_at_s))
            for c in sorted(rec.wait_curves, key=lambda c: (c.task_type, c.config != "baseline"))]
    text = ("P(acquired within t) per task type, over all its tasks. A task that gave up after "
            "`max_wait_time` never acquired the lock: it is censored there, not counted as a "
            "wait. So each curve ends at its acquired share, flat, and the give-ups are marked "
            "at `max_wait_time` with their share; a curve that ends lower turned more tasks "
            "away. (`wait_mean_s` counts a give-up as a wait of `max_wait_time`, which "
            "flatters the config that gives up sooner.)")
    if not rows:
        return [("h2", "Lock wait by task type"), ("p", "rec.json holds no wait curves.")]
    head = ("task type", "config", "tasks (all replications)", "acquired", "gave up",
            "censored at")
    return [("h2", "Lock wait by task type"), ("p", text),
            ("img", "waits.png", "P(acquired within t) per task type, give-ups censored"),
            ("table", head, rows)]


def _pareto(rec: Recommendation) -> list[Block]:
    s = rec.inputs.search
    front = rec.pareto_front
    feasible = sum(p.feasible for p in front)
    rows = [(str(p.trial), _secs(p.wait_mean_s), _pct(p.redis_cpu_utilization),
             "yes" if p.feasible else "no", _settings(p.gpu_lock)) for p in front]
    text = (f"{len(front)} trials on the Pareto front of mean lock wait against Redis CPU "
            f"({feasible} of them meet every gate on their point estimates), from "
            f"{rec.study.trials_by_state.get('COMPLETE', 0)} complete trials on seed {s.seed} "
            f"with {s.replications} replications each. Today's config and the pick are "
            f"drawn with their check-seed values and 95% intervals.")
    out: list[Block] = [("h2", "Pareto front"), ("p", text),
                        ("img", "pareto.png", "Pareto front: mean lock wait vs Redis CPU")]
    if rows:
        out.append(("table", ("trial", "mean wait", "Redis CPU", "feasible", "settings"), rows))
    return out


def _candidates(rec: Recommendation) -> list[Block]:
    if not rec.candidates:
        return []
    rows = []
    for c in rec.candidates:
        misses = ", ".join(g.name for g in c.gates if not g.passed) or "none"
        rows.append((str(c.trial), _estimate(c.wait_mean_s, _secs),
                     _estimate(c.redis_cpu_utilization, _pct), "PASS" if c.passed else "FAIL",
                     misses, _settings(c.gpu_lock)))
    head = ("trial", "mean wait", "Redis CPU", "result", "fails", "settings")
    return [("h2", "Re-checked candidates"),
            ("p", rec.inputs.search.selection_rule), ("table", head, rows)]


def _objectives(rec: Recommendation) -> list[str]:
    """The search's objectives in their order (wait, then Redis CPU), then any others."""
    return sorted(rec.importances, key=lambda o: (o not in _OBJECTIVES,
                                                  _OBJECTIVES.index(o) if o in _OBJECTIVES
                                                  else 0, o))


def _importances(rec: Recommendation) -> list[Block]:
    objectives = _objectives(rec)
    params = sorted({p for v in rec.importances.values() for p in v},
                    key=lambda p: (-max(rec.importances[o].get(p, 0.0) for o in objectives), p))
    rows = [(f"`{p}`", *(_num(rec.importances[o].get(p)) for o in objectives)) for p in params]
    out: list[Block] = [("h2", "What moves the objectives")]
    if not rows:
        return out + [("p", "Too few distinct trials to fit importances.")]
    return out + [("p", "fANOVA importance of each setting for each objective (shares of the "
                        "objective's variance over the search; each column sums to 1)."),
                  ("img", "importances.png", "Setting importances per objective"),
                  ("table", ("setting", *objectives), rows)]


def _what_if(rec: Recommendation) -> list[Block]:
    w = rec.what_if
    out: list[Block] = []
    if w.ideal_lock is not None:
        i = w.ideal_lock
        change = Estimate(mean=None if i.wait_reduction.mean is None else -i.wait_reduction.mean,
                          ci95=None if i.wait_reduction.ci95 is None else
                          (-i.wait_reduction.ci95[1], -i.wait_reduction.ci95[0]))
        out.append(("p", f"A near-ideal lock ({_settings(i.gpu_lock)}) against today's config "
                         f"changes the mean wait by {_estimate(change, _signed_pct)} with "
                         f"{_pct(i.timeout_rate)} timeouts: about what any lock setting can do "
                         f"for the wait without timing tasks out."))
    if w.gpus:
        rows = [(str(g.gpus_per_node), g.gpu_policy, "PASS" if g.passed else "FAIL",
                 _pct(g.wait_reduction), _pct(g.timeout_rate)) for g in w.gpus]
        needed = (f"Fewest GPUs per node at which a searched config passes every gate: "
                  f"{w.gpus_needed}." if w.gpus_needed is not None else
                  f"No tried config passes every gate even with {w.gpus[-1].gpus_per_node} GPUs "
                  f"per node.")
        out += [("p", needed), ("table", ("GPUs per node", "placement", "result", "wait cut",
                                          "timeout rate"), rows)]
    p = w.per_type_max_wait
    if p is not None:
        waits = ", ".join(f"`{k}` {_secs(v)}"
                          for k, v in sorted(p.max_wait_time_by_type.items()))
        out += [("p", f"Per-task-type `max_wait_time` (a YiVideo code change, on "
                      f"{_settings(p.base_config)}): {waits}: wait cut {_pct(p.wait_reduction)}, "
                      f"timeouts {_pct(p.timeout_rate)}, "
                      f"{'passes every gate' if p.passed else 'fails a gate'}. Timeouts by "
                      f"task type: " + ", ".join(f"`{k}` {_pct(v)}" for k, v in
                                                 sorted(p.timeout_rate_by_task_type.items()))
                      + "."),
                ("table", ("gate", "value", "95% interval", "judged at", "threshold", "margin",
                           "result"), _gate_rows(p.gates))]
    return [("h2", "What if"), *out] if out else []


def _inputs(rec: Recommendation) -> list[Block]:
    i, s, st = rec.inputs, rec.inputs.search, rec.study
    v = i.versions
    items = [f"Trace `{i.trace.path}`, sha256 `{i.trace.sha256}`, {i.trace.tasks} tasks, span "
             f"{i.trace.span_s / 3600:.3g} h, types {', '.join(i.trace.task_types)}",
             f"Baseline `{i.baseline.get('source', '?')}`: "
             f"{_settings(i.baseline.get('gpu_lock', {}))}",
             "Thresholds: " + ", ".join(f"{k} {_num(x)}" for k, x in sorted(i.thresholds.items())),
             f"Search: {s.sampler}; sampler seed {s.seed}, simulation seed {s.simulation_seed}, "
             f"{s.trials} trials x {s.replications} replications; check seed {s.check_seed}, "
             f"{s.check_replications} replications, {s.check_candidates} candidates",
             f"Study `{st.name}` in `{st.storage}`: " + ", ".join(
                 f"{n} {k.lower()}" for k, n in sorted(st.trials_by_state.items())),
             f"Versions: gpusim {v.gpusim}, optuna {v.optuna}, numpy {v.numpy}, "
             f"Python {v.python}",
             f"Schema `{rec.schema_}`, created {rec.created_at}"]
    return [("h2", "Inputs"), ("ul", items),
            ("p", "Cluster and search space:"),
            ("code", "json", json.dumps({"cluster": i.cluster, "space": i.space},
                                        sort_keys=True, indent=1, ensure_ascii=False))]


# ---------------------------------------------------------------- rendering


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + b[1])
        elif kind == "p":
            out.append(b[1])
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in b[1]))
        elif kind == "code":
            out.append(f"```{b[1]}\n{b[2]}\n```")
        elif kind == "table":
            lines = ["| " + " | ".join(_md_cell(h) for h in b[1]) + " |",
                     "|" + "---|" * len(b[1])]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b[2]]
            out.append("\n".join(lines))
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1]})")
    return "\n\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:70em;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.PASS{color:#176b28;font-weight:600}td.FAIL{color:#b3261e;font-weight:600}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em}
pre{background:#f6f6f6;border:1px solid #ddd;padding:.7em;overflow-x:auto}
img{max-width:100%;height:auto;display:block;margin:.6em 0}"""


def _inline(text: str) -> str:
    """Escaped text with `code` and **strong** as HTML."""
    s = html.escape(text, quote=False)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)


def _html_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{_inline(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(f'<td class="{c}">{c}</td>' if c in ("PASS", "FAIL")
                        else f"<td>{_inline(c)}</td>" for c in row)
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(blocks: list[Block], pngs: dict[str, bytes], title: str) -> str:
    """One self-contained page: inline CSS, images as data: URIs, no script."""
    parts = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "p"):
            parts.append(f"<{kind}>{_inline(b[1])}</{kind}>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in b[1]) + "</ul>")
        elif kind == "code":
            parts.append(f'<pre><code class="{b[1]}">{html.escape(b[2], quote=False)}'
                         f"</code></pre>")
        elif kind == "table":
            parts.append(_html_table(b[1], b[2]))
        elif kind == "img":
            data = base64.b64encode(pngs[b[1]]).decode("ascii")
            parts.append(f'<img src="data:image/png;base64,{data}" alt="{html.escape(b[2])}">')
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>\n{_CSS}\n</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


# ---------------------------------------------------------------- plots


def _matplotlib() -> Any:
    try:
        import matplotlib
        import matplotlib.figure  # noqa: F401 - the Figure class, no pyplot and no backend
        import matplotlib.style  # noqa: F401
    except ImportError as err:  # a dependency of gpusim: only a broken install lacks it
        raise ImportError("gpusim report draws its plots with matplotlib, which is not "
                          "installed here: pip install 'matplotlib>=3.8'") from err
    return matplotlib


def render_plots(rec: Recommendation) -> dict[str, bytes]:
    """The four PNGs, byte-identical for the same rec (default style, no metadata)."""
    mpl = _matplotlib()
    out = {}
    with mpl.style.context("default"), mpl.rc_context(_RC):
        for name, fig in figures(rec).items():
            buf = io.BytesIO()
            fig.savefig(buf, format="png", metadata={"Software": None})
            out[name] = buf.getvalue()
    return out


def figures(rec: Recommendation) -> dict[str, Any]:
    """matplotlib Figures (no pyplot: nothing global is touched), keyed by file name."""
    _matplotlib()
    return {"pareto.png": pareto_figure(rec), "waits.png": waits_figure(rec),
            "headroom.png": headroom_figure(rec), "importances.png": importances_figure(rec)}


def _new_figure(w: float, h: float) -> Any:
    from matplotlib.figure import Figure
    return Figure(figsize=(w, h), layout="constrained")


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _mark(ax: Any, metrics: dict[str, Estimate], label: str, **style: Any) -> None:
    """A config's check-seed point with its 95% intervals as error bars."""
    w, c = metrics.get("wait_mean_s"), metrics.get("redis_cpu_utilization")
    if w is None or c is None or w.mean is None or c.mean is None:
        return

    def err(e: Estimate, scale: float) -> Any:
        if e.ci95 is None:
            return None
        return [[max(e.mean - e.ci95[0], 0.0) * scale], [max(e.ci95[1] - e.mean, 0.0) * scale]]
    ax.errorbar([c.mean * 100], [w.mean], xerr=err(c, 100), yerr=err(w, 1), fmt="none",
                ecolor=style.get("color", "k"), elinewidth=1, capsize=3, zorder=4)
    ax.scatter([c.mean * 100], [w.mean], label=label, zorder=5, edgecolors="k", **style)


def _gate_lines(ax: Any, rec: Recommendation) -> None:
    base, th = rec.metrics.get("baseline", {}), rec.inputs.thresholds
    w, c = base.get("wait_mean_s"), base.get("redis_cpu_utilization")
    if w is not None and w.mean is not None and "wait_reduction_min" in th:
        cut = th["wait_reduction_min"]
        ax.axhline(w.mean * (1 - cut), color="C2", ls="--", lw=0.9,
                   label=f"wait gate: {cut:.0%} below today")
    if c is not None and c.mean is not None and "redis_cpu_increase_max" in th:
        up = th["redis_cpu_increase_max"]
        ax.axvline(c.mean * 100 * (1 + up), color="C3", ls=":", lw=0.9,
                   label=f"Redis CPU gate: < {up:.0%} above today")


def _draw_front(ax: Any, front: list[Any]) -> None:
    """The search's Pareto front (search seeds): the staircase and its trials."""
    ax.plot([p.redis_cpu_utilization * 100 for p in front], [p.wait_mean_s for p in front],
            color="0.7", lw=1, zorder=1, drawstyle="steps-post")
    for ok, style in ((True, dict(marker="o", color="C2", label="front: meets every gate")),
                      (False, dict(marker="x", color="C7", label="front: misses a gate"))):
        pts = [p for p in front if p.feasible == ok]
        if pts:
            ax.scatter([p.redis_cpu_utilization * 100 for p in pts],
                       [p.wait_mean_s for p in pts], s=28, zorder=3, **style)


def _draw_checked(ax: Any, rec: Recommendation, pick: int | None) -> None:
    """The other re-checked candidates at their check-seed means, hollow."""
    for ok, color, label in ((True, "C2", "re-checked: passes"), (False, "C7", "re-checked: "
                                                                         "fails a gate")):
        pts = [c for c in rec.candidates if c.passed == ok and c.trial != pick
               and c.wait_mean_s.mean is not None and c.redis_cpu_utilization.mean is not None]
        if pts:
            ax.scatter([c.redis_cpu_utilization.mean * 100 for c in pts],
                       [c.wait_mean_s.mean for c in pts], s=40, marker="D", facecolors="none",
                       edgecolors=color, zorder=3, label=label)


def pareto_figure(rec: Recommendation) -> Any:
    fig = _new_figure(7.5, 4.8)
    ax = fig.add_subplot()
    front = sorted(rec.pareto_front, key=lambda p: (p.redis_cpu_utilization, p.wait_mean_s))
    if not front and not rec.metrics.get("baseline"):
        _empty(ax, "no complete trials")
        return fig
    _draw_front(ax, front)
    pick = rec.recommended.trial if rec.recommended else (rec.nearest.trial if rec.nearest
                                                          else None)
    _draw_checked(ax, rec, pick)
    _mark(ax, rec.metrics.get("baseline", {}), "today's config", marker="s", color="C0", s=60)
    name = "recommended" if rec.status == "recommended" else "nearest (fails a gate)"
    _mark(ax, rec.metrics.get("candidate", {}), f"{name}, trial {pick}", marker="*",
          color="C1", s=180)
    _gate_lines(ax, rec)
    waits = [p.wait_mean_s for p in front if p.wait_mean_s > 0]
    if waits and max(waits) / min(waits) > 30:
        ax.set_yscale("log")
    ax.set_xlabel("mean Redis CPU (%)")
    ax.set_ylabel("mean lock wait (s)")
    ax.set_title("Pareto front of the search (search seeds); today, the pick and the other "
                 "re-checked configs on check seeds", fontsize=8)
    ax.legend(fontsize=7, loc="best")
    return fig


def wait_curve_xy(c: WaitCurve) -> tuple[list[float], list[float]]:
    """The curve as drawn: P(acquired within t) from t = 0 to the last acquisition, then flat
    at the acquired share up to `censored_at_s`. Tasks that gave up never acquire, so it
    never rises at `censored_at_s`: it ends at `acquired_share` (1 only when none gave up)."""
    if not c.wait_s:
        return [0.0, c.censored_at_s], [0.0, 0.0]
    xs = [0.0, *c.wait_s]
    ys = [0.0, *c.probabilities]
    end = max(c.censored_at_s, c.wait_s[-1])
    if end > xs[-1]:
        xs.append(end)
        ys.append(c.acquired_share)
    return xs, ys


def _draw_curve(ax: Any, c: WaitCurve, k: int) -> None:
    color = _CONFIG_COLOR[c.config]
    xs, ys = wait_curve_xy(c)
    label = f"{_CONFIG_LABEL[c.config]}: acquired {c.acquired_share:.1%}"
    ax.plot(xs, ys, color=color, lw=1.4, label=label)
    if c.timeout_share > 0:
        ax.plot([c.censored_at_s], [c.acquired_share], marker="X", ms=8, color=color,
                markeredgecolor="k", markeredgewidth=0.5, ls="none", zorder=5)
        ax.annotate(f"{c.timeout_share:.1%} gave up at {c.censored_at_s:g} s\n(never acquired)",
                    xy=(c.censored_at_s, c.acquired_share), xytext=(0.97, 0.06 + 0.17 * k),
                    textcoords="axes fraction", ha="right", va="bottom", fontsize=7,
                    color=color, arrowprops=dict(arrowstyle="->", color=color, lw=0.6,
                                                 shrinkB=5))


def waits_figure(rec: Recommendation) -> Any:
    types = sorted({c.task_type for c in rec.wait_curves})
    if not types:
        fig = _new_figure(6, 3)
        _empty(fig.add_subplot(), "no wait curves in rec.json")
        return fig
    cols = min(3, len(types))
    rows = math.ceil(len(types) / cols)
    fig = _new_figure(4.3 * cols, 3.5 * rows)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    right = max(c.censored_at_s for c in rec.wait_curves) * 1.6
    order = {"baseline": 0, "recommended": 1, "nearest": 1}
    for ax, t in zip(axes.flat, types):
        curves = sorted((c for c in rec.wait_curves if c.task_type == t),
                        key=lambda c: order[c.config])
        for k, c in enumerate(curves):
            _draw_curve(ax, c, k)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(0, right)
        ax.set_ylim(0, 1.02)
        ax.set_title(t)
        ax.set_xlabel("t: lock wait (s)")
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes.flat[len(types):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("P(acquired within t)")
    fig.suptitle("Lock acquired within t, over all tasks; give-ups (X) never acquire, so a "
                 "curve ends at its acquired share", fontsize=9)
    return fig


def headroom_figure(rec: Recommendation) -> Any:
    h = rec.headroom
    rows = [("all tasks", h.overall)] + sorted(h.by_task_type.items())
    fig = _new_figure(7.5, 1.6 + 0.55 * len(rows))
    ax = fig.add_subplot()
    names = [n for n, _ in rows]
    held = [r.held_mean_s or 0.0 for _, r in rows]
    free = [r.free_mean_s or 0.0 for _, r in rows]
    y = list(range(len(rows)))
    ax.barh(y, held, color="C0", label="key held by another task (busy GPU)")
    ax.barh(y, free, left=held, color="C1", label="key free while waiting (winnable)")
    for i, (_, r) in enumerate(rows):
        ax.text(held[i] + free[i], i, f"  free {_pct(r.free_share)}, timeouts "
                f"{_pct(r.timeout_rate)}", va="center", fontsize=7)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, max(max(a + b for a, b in zip(held, free)), 1e-9) * 1.45)
    ax.set_xlabel("mean lock wait today (s)")
    ax.set_title("Where today's lock wait goes", fontsize=9)
    fig.legend(fontsize=7, loc="outside lower center", ncols=2)
    return fig


def importances_figure(rec: Recommendation) -> Any:
    objectives = _objectives(rec) or list(_OBJECTIVES)
    fig = _new_figure(4.0 * len(objectives), 3.2)
    axes = fig.subplots(1, len(objectives), squeeze=False)[0]
    for ax, obj in zip(axes, objectives):
        imp = rec.importances.get(obj) or {}
        if not imp:
            _empty(ax, "too few distinct trials")
        else:
            items = sorted(imp.items(), key=lambda kv: (kv[1], kv[0]))
            ax.barh(range(len(items)), [v for _, v in items], color="C0")
            ax.set_yticks(range(len(items)), [k for k, _ in items])
            ax.set_xlim(0, 1)
            ax.set_xlabel("fANOVA importance")
        ax.set_title(obj, fontsize=9)
    return fig
