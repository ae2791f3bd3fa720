"""`gpusim trace check`: what a person wants to know before trusting a trace.

Tasks and span; per type: count, share, mean hold; offered load per GPU (sum of the known holds
on a (node, gpu) / the trace's span, the span running from the first arrival to the last
arrival plus its hold, ``(unplaced)`` for tasks without node/gpu); observed outcomes when the
trace has them (waits: mean, p50, p95, max; timeout rate; attempts; configs); holds unknown (a
timed-out task never held); and gaps in the record.

Gaps: the inter-arrival times longer than 1 h, or longer than 20 times the median inter-arrival
time. Why 20: were arrivals Poisson, a gap exceeds k medians with probability 2^-k, so 20 medians
flags about one gap per million by chance, and 10 (one per thousand) would flag real busy
days. A flagged gap is a hint (a logger down, a lost file, a quiet night), not a verdict.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["GAP_MEDIANS", "GAP_ABSOLUTE_S", "check_trace", "render"]

GAP_MEDIANS = 20.0
GAP_ABSOLUTE_S = 3600.0
_TOP_GAPS = 5


def _stats(x: np.ndarray) -> dict[str, float] | None:
    if x.size == 0:
        return None
    return {"n": int(x.size), "mean": float(x.mean()), "p50": float(np.percentile(x, 50)),
            "p95": float(np.percentile(x, 95)), "max": float(x.max())}


def _types(cols: Any) -> dict[str, Any]:
    n = len(cols.arrival_s)
    out = {}
    for code, name in enumerate(cols.types):
        sel = cols.task_type == code
        holds = cols.duration_s[sel]
        known = holds[~np.isnan(holds)]
        out[name] = {"tasks": int(sel.sum()), "share": float(sel.sum() / n) if n else 0.0,
                     "mean_hold_s": float(known.mean()) if known.size else None}
    return out


def _load(cols: Any, span: float) -> dict[str, float]:
    holds = np.nan_to_num(cols.duration_s, nan=0.0)
    out: dict[str, float] = {}
    places: dict[tuple[int, int], float] = {}
    for node, gpu, h in zip(cols.node.tolist(), cols.gpu.tolist(), holds.tolist()):
        places[(node, gpu)] = places.get((node, gpu), 0.0) + h
    for (node, gpu), busy in sorted(places.items()):
        if node < 0 and gpu < 0:
            name = "(unplaced)"
        else:
            name = f"{cols.nodes[node] if node >= 0 else '?'}/gpu{gpu if gpu >= 0 else '?'}"
        out[name] = busy / span if span > 0 else float("nan")
    return out


def _gaps(arrivals: np.ndarray) -> dict[str, Any]:
    if arrivals.size < 2:
        return {"median_s": None, "largest": [], "flagged": []}
    gaps = np.diff(arrivals)
    median = float(np.median(gaps))
    limit = min(GAP_ABSOLUTE_S, GAP_MEDIANS * median) if median > 0 else GAP_ABSOLUTE_S
    order = np.argsort(-gaps, kind="stable")
    largest = [{"after_s": float(arrivals[i]), "gap_s": float(gaps[i])} for i in order[:_TOP_GAPS]]
    flagged = [{"after_s": float(arrivals[i]), "gap_s": float(gaps[i])}
               for i in np.flatnonzero(gaps > limit)]
    return {"median_s": median, "limit_s": limit, "largest": largest, "flagged": flagged}


def _observed(trace: Any) -> dict[str, Any] | None:
    from gpusim.traces.observed import ACQUIRED, TIMEOUT
    obs = trace.observed
    if obs is None:
        return None
    given = obs.outcome >= 0
    waits = obs.wait_s[~np.isnan(obs.wait_s)]
    n_out = int(given.sum())
    timeouts = int((obs.outcome == TIMEOUT).sum())
    att = obs.attempts[obs.attempts >= 0]
    digests: dict[str, int] = {}
    for d in obs.config_digest:
        if d is not None:
            digests[d] = digests.get(d, 0) + 1
    return {"with_outcome": n_out, "acquired": int((obs.outcome == ACQUIRED).sum()),
            "timeouts": timeouts, "timeout_rate": timeouts / n_out if n_out else None,
            "wait_s": _stats(waits),
            "wait_s_acquired": _stats(obs.wait_s[(obs.outcome == ACQUIRED)
                                                 & ~np.isnan(obs.wait_s)]),
            "attempts_mean": float(att.mean()) if att.size else None,
            "config_digests": dict(sorted(digests.items()))}


def check_trace(trace: Any) -> dict[str, Any]:
    """The summary as a JSON-able dict (see the module docstring)."""
    cols = trace.columns
    arr, hold = cols.arrival_s, cols.duration_s
    n = len(arr)
    ends = arr + np.nan_to_num(hold, nan=0.0)
    span = float(ends.max() - arr.min()) if n else 0.0
    return {
        "source": trace.source, "tasks": n,
        "first_arrival_epoch_s": trace.start_epoch,
        "arrival_span_s": float(arr.max() - arr.min()) if n else 0.0, "span_s": span,
        "types": _types(cols),
        "offered_load_per_gpu": _load(cols, span),
        "unknown_holds": int(np.isnan(hold).sum()), "crashed": int(cols.crashed.sum()),
        "observed": _observed(trace), "gaps": _gaps(arr),
    }


def _fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 3600:
        return f"{x / 3600:.2f} h"
    return f"{x:.3f} s" if x < 10 else f"{x:.1f} s"


def render(s: dict[str, Any]) -> str:
    """The summary as text for a person."""
    out = [f"{s['source']}: {s['tasks']} tasks over {_fmt_s(s['span_s'])} "
           f"(arrivals over {_fmt_s(s['arrival_span_s'])})"]
    if s["first_arrival_epoch_s"] is not None:
        from datetime import UTC, datetime
        first = datetime.fromtimestamp(s["first_arrival_epoch_s"], UTC)
        out.append(f"first arrival {first.isoformat(timespec='milliseconds')}")
    out.append("types:")
    for name, t in s["types"].items():
        out.append(f"  {name:<24} {t['tasks']:>8}  {t['share'] * 100:5.1f}%  mean hold "
                   f"{_fmt_s(t['mean_hold_s'])}")
    out.append("offered load per GPU (known holds / span):")
    for place, load in s["offered_load_per_gpu"].items():
        out.append(f"  {place:<24} {load:.3f}")
    if s["unknown_holds"]:
        out.append(f"unknown holds: {s['unknown_holds']} (timed out; not replayable until "
                   "filled)")
    if s["crashed"]:
        out.append(f"crashed holders: {s['crashed']}")
    out.extend(_render_observed(s["observed"]))
    g = s["gaps"]
    if g["median_s"] is not None:
        out.append(f"gaps: median inter-arrival {_fmt_s(g['median_s'])}; flagged (> "
                   f"{_fmt_s(g['limit_s'])}): {len(g['flagged'])}; largest: "
                   + ", ".join(f"{_fmt_s(x['gap_s'])} after {_fmt_s(x['after_s'])}"
                               for x in g["largest"]))
    return "\n".join(out)


def _render_observed(o: dict[str, Any] | None) -> list[str]:
    if o is None:
        return ["observed outcomes: none in this trace"]
    lines = [f"observed outcomes: {o['with_outcome']} tasks, {o['timeouts']} timed out"
             + (f" ({o['timeout_rate'] * 100:.2f}%)" if o["timeout_rate"] is not None else "")]
    w = o["wait_s"]
    if w is not None:
        lines.append(f"  waits: mean {_fmt_s(w['mean'])}, p50 {_fmt_s(w['p50'])}, p95 "
                     f"{_fmt_s(w['p95'])}, max {_fmt_s(w['max'])} ({w['n']} given)")
    if o["attempts_mean"] is not None:
        lines.append(f"  attempts: mean {o['attempts_mean']:.2f}")
    for d, n in o["config_digests"].items():
        lines.append(f"  config {d}: {n} tasks")
    return lines
