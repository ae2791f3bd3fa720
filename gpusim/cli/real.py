"""`gpusim validate` and `gpusim calibrate-redis`: the commands that talk to a real Redis.

Plain functions with typer annotations; `register(app)` mounts them on the main app.
Exit codes: 0 every judged metric PASSes (calibrate: done), 1 otherwise (a FAIL or INCONCLUSIVE
row, Redis dying mid-run, or ``--hold cuda`` skipped for want of CUDA), 2 bad input (files,
values, an unreachable Redis URL).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gpusim.errors import InputError

EXIT_FAIL = 1
EXIT_BAD_INPUT = 2


def _out() -> Console:
    return Console(width=None if sys.stdout.isatty() else 140)


def _err() -> Console:
    return Console(stderr=True, width=None if sys.stderr.isatty() else 140)


def _error(msg: str, code: int) -> typer.Exit:
    _err().print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _fmt(v: float | None, kind: str = "rel") -> str:
    if v is None:
        return "-"
    if kind == "abs":
        return f"{v * 100:+.2f} pt"
    return f"{v * 100:+.1f}%"


def _num(v: float | None, sd: float | None = None) -> str:
    if v is None:
        return "-"
    s = f"{v:.4g}"
    if sd is not None:
        s += f" ± {sd:.2g}"
    return s


def comparison_table(cmp_: Any, *, title: str) -> Table:
    t = Table(title=title)
    for col in ("metric", "real (mean ± sd)", "sim (mean ± sd)", "error", "95% CI", "tolerance",
                "verdict"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    colors = {"PASS": "green", "FAIL": "red", "INCONCLUSIVE": "yellow"}
    for r in cmp_.rows:
        ci = "-" if r.ci_low is None else f"[{_fmt(r.ci_low, r.kind)}, {_fmt(r.ci_high, r.kind)}]"
        tol = "-" if r.tolerance is None else (f"±{r.tolerance * 100:g} pt" if r.kind == "abs"
                                               else f"±{r.tolerance * 100:g}%")
        verdict = r.verdict
        if verdict in colors:
            verdict = f"[{colors[verdict]}]{verdict}[/]"
        t.add_row(r.label, _num(r.real_mean, r.real_sd), _num(r.sim_mean, r.sim_sd),
                  _fmt(r.error, r.kind), ci, tol, verdict)
    return t


def validate(
    trace: Annotated[Path, typer.Argument(help="trace file (JSONL or CSV)")],
    config: Annotated[Path, typer.Option("--config", "-c",
                                         help="YiVideo config.yml or bare gpu_lock YAML")],
    redis_url: Annotated[Optional[str], typer.Option(
        "--redis-url", help="Redis to replay against; default: a private redis-server")] = None,
    time_scale: Annotated[float, typer.Option(
        "--time-scale", help="divide trace and config times by this factor")] = 1.0,
    runs: Annotated[int, typer.Option("--runs", help="real replays")] = 3,
    hold: Annotated[str, typer.Option("--hold", help="sleep | cuda (real matmul loop)")] = "sleep",
    seeds: Annotated[int, typer.Option("--seeds", help="simulated replications")] = 10,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write results here")] = None,
    cluster: Annotated[Optional[Path], typer.Option(
        "--cluster", help="cluster file; default: one node, Redis calibrated on the spot")] = None,
    seed: Annotated[int, typer.Option("--seed", help="base seed (jitter streams)")] = 0,
    calibrate: Annotated[Optional[bool], typer.Option(
        "--calibrate/--no-calibrate",
        help="calibrate Redis CPU on the spot; default: only without --cluster")] = None,
    reference: Annotated[Optional[bool], typer.Option(
        "--reference/--no-reference",
        help="run a CPU control load on a second private redis-server during each run; "
             "default: when calibrating a Redis on this host")] = None,
) -> None:
    """Replay a trace against a real Redis, simulate it, and judge the model (PASS/FAIL)."""
    from gpusim.cluster import load_cluster
    from gpusim.config import load_lock_settings
    from gpusim.traces.format import load_trace
    from gpusim.real.validate import (CudaUnavailable, RedisDiedDuringRun, RedisUnavailable,
                                 validate as run_validation)

    if runs < 1 or seeds < 1:
        raise _error("--runs and --seeds must be >= 1", EXIT_BAD_INPUT)
    if hold not in ("sleep", "cuda"):
        raise _error("--hold must be 'sleep' or 'cuda'", EXIT_BAD_INPUT)
    if not (time_scale > 0):
        raise _error("--time-scale must be > 0", EXIT_BAD_INPUT)
    try:
        tr = load_trace(trace)
        settings = load_lock_settings(config)
        cl = load_cluster(cluster) if cluster is not None else None
    except InputError as e:
        raise _error(e.render(), EXIT_BAD_INPUT)
    partial = (json_out.with_name(json_out.stem + ".partial.json") if json_out is not None
               else Path("gpusim-validate.partial.json"))
    err = _err()
    try:
        cmp_, real, sim, cal = run_validation(
            tr, settings, redis_url=redis_url, time_scale=time_scale, runs=runs, seeds=seeds,
            seed=seed, hold=hold, cluster=cl, partial_path=partial, calibrate=calibrate,
            reference=reference,
            progress=lambda m: err.print(f"[dim]{escape(m)}[/]", highlight=False))
    except CudaUnavailable as e:
        _out().print(f"[yellow]{escape(str(e))}[/]")
        raise typer.Exit(EXIT_FAIL)
    except RedisUnavailable as e:
        raise _error(str(e), EXIT_BAD_INPUT)
    except RedisDiedDuringRun as e:
        raise _error(str(e), EXIT_FAIL)
    except InputError as e:
        raise _error(e.render(), EXIT_BAD_INPUT)
    out = _out()
    out.print(comparison_table(
        cmp_, title=f"validate: {len(tr)} tasks, time scale 1/{time_scale:g}, {cmp_.n_real} real "
                    f"runs vs {cmp_.n_sim} seeds (waits in replay seconds = trace s / "
                    f"{time_scale:g})"))
    wt = cmp_.wait_tests
    if "ks_statistic" in wt:
        out.print(f"wait distributions: KS D={wt['ks_statistic']:.3f} p={wt['ks_pvalue']:.3g}; "
                  f"Anderson-Darling A={wt.get('ad_statistic', float('nan')):.3f} "
                  f"p~{wt.get('ad_pvalue_capped', float('nan')):.3g} (information only: "
                  f"dependent waits, ties)", highlight=False)
    if "ks_queued_statistic" in wt:
        out.print(f"waits of tasks that queued ({wt['n_queued_real']} real, "
                  f"{wt['n_queued_sim']} sim): KS D={wt['ks_queued_statistic']:.3f} "
                  f"p={wt['ks_queued_pvalue']:.3g}", highlight=False)
    lt = cmp_.lateness
    if lt:
        out.print(f"replay timing: start lateness p95 {lt['start_p95_s'] * 1e3:.2f} ms, sleep "
                  f"overshoot p95 {lt['sleep_overshoot_p95_s'] * 1e3:.2f} ms, hold overshoot "
                  f"p95 {lt['hold_overshoot_p95_s'] * 1e3:.2f} ms", highlight=False)
    for n in cmp_.notes:
        out.print(f"note: {escape(n)}", highlight=False)
    if json_out is not None:
        doc = {"schema": "gpusim.validate/1", "comparison": cmp_.to_json(),
               "real": real.to_json(),
               "sim": {"inputs": sim.inputs, "metrics": sim.metrics,
                       "replications": [r.metrics for r in sim.replications]},
               "calibration": cal}
        json_out.write_text(json.dumps(doc, indent=2, default=str), encoding="utf-8")
    passed = cmp_.passed
    out.print("[green]validation PASSES[/]" if passed else "[red]validation FAILS[/]")
    raise typer.Exit(0 if passed else EXIT_FAIL)


def calibrate_redis(
    redis_url: Annotated[Optional[str], typer.Option(
        "--redis-url", help="Redis to measure (loopback or one you name); default: a private "
                            "redis-server")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="write the cluster file's redis section (YAML) here")] = None,
    seconds: Annotated[float, typer.Option(
        "--seconds", help="load per command type (bounded)")] = 0.3,
    gap_s: Annotated[Optional[float], typer.Option(
        "--gap-s", help="also measure the wake-up cost at this mean gap between commands "
                        "(for an otherwise idle Redis)")] = None,
) -> None:
    """Measure Redis CPU per lock command and the client round trip (a few seconds)."""
    from gpusim.real.calibrate import CalibrationError, calibrate_redis as run_cal
    from gpusim.real.server import PrivateRedis

    if seconds <= 0 or seconds > 10:
        raise _error("--seconds must be in (0, 10]", EXIT_BAD_INPUT)
    owned = None
    try:
        if redis_url is None:
            owned = PrivateRedis().start()
            redis_url = owned.url
            _err().print("[dim]no --redis-url: measuring a private redis-server[/]")
        res = run_cal(redis_url, seconds_per_command=seconds, wakeup_gap_s=gap_s, out=out)
    except CalibrationError as e:
        raise _error(str(e), EXIT_BAD_INPUT)
    finally:
        if owned is not None:
            owned.stop()
    r = res["redis"]
    t = Table(title=f"Redis {res['details'].get('server')}: CPU per command "
                    f"(INFO cpu deltas), rtt {r['rtt_s'] * 1e6:.0f} us")
    t.add_column("command")
    t.add_column("cpu us", justify="right")
    t.add_column("commandstats usec_per_call", justify="right")
    cs = res["details"].get("commandstats_usec_per_call", {})
    for name, v in r["cpu_us"].items():
        ref = cs.get(name, {}).get(name)
        t.add_row(name, f"{v:.2f}", "-" if ref is None else f"{ref:.2f}")
    _out().print(t)
    if out is not None:
        _out().print(f"wrote {escape(str(out))}")


def register(app: typer.Typer) -> None:
    """Add `validate` and `calibrate-redis` to the main `gpusim` app."""
    app.command("validate")(validate)
    app.command("calibrate-redis")(calibrate_redis)
