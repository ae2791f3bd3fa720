"""`gpusim validate` and `gpusim calibrate-redis`: the commands that talk to a real Redis.

Plain functions with typer annotations; `register(app)` mounts them on the main app.
Exit codes (gpusim.exitcodes): validate 0 every judged metric PASSes (its whole 95% interval
inside the band), 1 a metric FAILs (wholly outside; or Redis died mid-run: partial results
saved), 2 bad input (files, values, the --json path, an unreachable Redis URL), 3 INCONCLUSIVE
(no FAIL, but an interval straddles its band: more runs or a longer trace; or a FAIL that real
runs stalled by their host may explain: gpusim.real.validate.judge_schedule), also ``--hold cuda``
skipped for want of CUDA (nothing was judged);
calibrate-redis 0 done, 2 bad input or an unreachable Redis.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.markup import escape

from gpusim.cli.common import (EXIT_CODES_HELP, ExitCode, bad_input, check_outputs, err,
                               fail, out)
from gpusim.cli.schedule_opts import ConfigChangeOpt, ScheduleOpt, load_changes
from gpusim.errors import InputError
from gpusim.output import atomic_write_text, jsonable

if TYPE_CHECKING:
    from rich.table import Table

VERDICT_HELP = (
    "Verdict, per judged row: PASS when the whole 95% interval of the error (sim - real) lies "
    "inside the tolerance band, FAIL when it lies wholly outside, INCONCLUSIVE when it "
    "straddles an edge (more --runs or a longer trace would settle it). Overall: FAIL if any "
    "row FAILs, PASS if every judged row PASSes, else INCONCLUSIVE. Intervals of per-task rows "
    "come from the trace's regeneration cycles (busy periods), pooled over runs. ")
ObservedOpt = Annotated[bool, typer.Option(
    "--observed", help="judge the model against the outcomes the trace itself records (wait_s, "
                       "outcome, attempts): no Redis; --runs, --hold, --time-scale unused")]
ToleranceOpt = Annotated[Optional[list[str]], typer.Option(
    "--tolerance", help="ROW=VALUE (e.g. wait_p95_s=0.2, redis_cpu_s=0.25) or ROW=none to "
                        "report without judging; repeatable")]
RUNS_PER_LANE = 3  # the default --runs: three rounds of --lanes runs
PaceOpt = Annotated[bool, typer.Option(
    "--pace/--no-pace",
    help="keep the real clients' tries on the model's schedule (a round trip measured before the "
         "runs per command, then the drawn sleep); --no-pace runs YiVideo's loop as is, whose "
         "~0.1 ms of client time a poll the time scale magnifies")]
RunsOpt = Annotated[Optional[int], typer.Option(
    "--runs", help="real replays", show_default=f"{RUNS_PER_LANE} a lane")]
SeedsOpt = Annotated[Optional[int], typer.Option(
    "--seeds", help="simulated replications", show_default="10, or --runs if more")]
LanesOpt = Annotated[Optional[int], typer.Option(
    "--lanes", help="real replays side by side, each in a process of its own against a private "
                    "redis-server of its own", show_default="three per CPU core (at most 8); 1 "
                                                            "with --redis-url, --reference or "
                                                            "--yivideo-log")]
VERDICT_EXIT = {"PASS": ExitCode.OK, "FAIL": ExitCode.FAIL, "INCONCLUSIVE": ExitCode.INCONCLUSIVE}
COLORS = {"PASS": "green", "FAIL": "red", "INCONCLUSIVE": "yellow"}


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
    from rich.table import Table
    t = Table(title=title)
    for col in ("metric", "real (mean ± sd)", "sim (mean ± sd)", "error", "95% CI", "tolerance",
                "verdict"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for r in cmp_.rows:
        ci = "-" if r.ci_low is None else f"[{_fmt(r.ci_low, r.kind)}, {_fmt(r.ci_high, r.kind)}]"
        tol = "-" if r.tolerance is None else (f"±{r.tolerance * 100:g} pt" if r.kind == "abs"
                                               else f"±{r.tolerance * 100:g}%")
        verdict = r.verdict
        if verdict in COLORS:
            verdict = f"[{COLORS[verdict]}]{verdict}[/]"
        t.add_row(r.label, _num(r.real_mean, r.real_sd), _num(r.sim_mean, r.sim_sd),
                  _fmt(r.error, r.kind), ci, tol, verdict)
    return t


def title(cmp_: Any, n_tasks: int, time_scale: float, *, observed: bool = False) -> str:
    """What was compared, truthfully: real runs, simulated seeds, and how they were judged."""
    how = (f"{cmp_.n_pairs} CRN pairs judged (paired)" if cmp_.n_pairs
           else "independent samples")
    if cmp_.n_cycles:
        how += f", intervals over {cmp_.n_cycles} regeneration cycles"
    if observed:
        return (f"validate --observed: {n_tasks} tasks, the trace's observed outcomes vs "
                f"{cmp_.n_sim} simulated seeds, {how}; waits in trace seconds")
    return (f"validate: {n_tasks} tasks, time scale 1/{time_scale:g}: {cmp_.n_real} real runs vs "
            f"{cmp_.n_sim} simulated seeds, {how}; waits in trace seconds (replay s x "
            f"{time_scale:g})")


def _check_outputs(*paths: Path | None) -> None:
    """Exit 2 before a long run when an output cannot be written (gpusim.cli.common)."""
    try:
        check_outputs(*paths)
    except InputError as e:
        raise bad_input(e)


def _counts(runs: int | None, seeds: int | None, lanes: int | None, *, one_at_a_time: bool
            ) -> tuple[int, int, int]:
    """(runs, seeds, lanes) with their defaults: three lanes per usable core (gpusim.real.lanes)
    unless a given Redis, a control load or a YiVideo log needs one run at a time; three runs
    a lane; at least as many seeds as runs (each run is paired with its simulated twin)."""
    from gpusim.real.lanes import MAX_AUTO_LANES, default_lanes

    for name, v in (("--runs", runs), ("--seeds", seeds), ("--lanes", lanes)):
        if v is not None and v < 1:
            raise fail(f"{name} must be >= 1", ExitCode.BAD_INPUT)
    if lanes is None:
        lanes = 1 if one_at_a_time else min(default_lanes(), runs or MAX_AUTO_LANES)
    if runs is None:
        runs = RUNS_PER_LANE * lanes
    return runs, (seeds if seeds is not None else max(10, runs)), lanes


def _check_options(hold: str, time_scale: float, json_out: Path | None) -> None:
    if hold not in ("sleep", "cuda"):
        raise fail("--hold must be 'sleep' or 'cuda'", ExitCode.BAD_INPUT)
    if not (time_scale > 0):
        raise fail("--time-scale must be > 0", ExitCode.BAD_INPUT)
    _check_outputs(json_out)


def _load_inputs(trace: Path, config: Path, cluster: Path | None) -> tuple[Any, Any, Any]:
    from gpusim.cluster import load_cluster
    from gpusim.config import load_lock_settings
    from gpusim.traces.format import load_trace

    try:
        return (load_trace(trace), load_lock_settings(config),
                load_cluster(cluster) if cluster is not None else None)
    except InputError as e:
        raise bad_input(e)


def _changes(config_change: list[str], schedule: Path | None) -> list[Any]:
    """--config-change / --schedule (gpusim.schedule): both sides read them alike."""
    try:
        return load_changes(config_change, schedule)
    except InputError as e:
        raise bad_input(e)


def _run(tr: Any, settings: Any, cl: Any, partial: Path, **kw: Any) -> tuple[Any, Any, Any, Any]:
    """The validation, its failures mapped to exit codes."""
    from gpusim.real.lanes import LaneFailed
    from gpusim.real.replay import CudaUnavailable, RedisDiedDuringRun, RedisUnavailable
    from gpusim.real.validate import validate as run_validation

    console = err()
    try:
        return run_validation(
            tr, settings, cluster=cl, partial_path=partial,
            progress=lambda m: console.print(f"[dim]{escape(m)}[/]", highlight=False), **kw)
    except CudaUnavailable as e:
        # nothing was judged: inconclusive, not a failure of the model
        out().print(f"[yellow]{escape(str(e))}[/] (exit {int(ExitCode.INCONCLUSIVE)}: nothing "
                    "was judged)", highlight=False)
        raise typer.Exit(int(ExitCode.INCONCLUSIVE))
    except RedisUnavailable as e:
        raise fail(str(e), ExitCode.BAD_INPUT)
    except (RedisDiedDuringRun, LaneFailed) as e:
        raise fail(str(e), ExitCode.FAIL)
    except InputError as e:
        raise bad_input(e)


def _write_json(path: Path, cmp_: Any, real: Any, sim: Any, cal: Any) -> None:
    doc = {"schema": "gpusim.validate/1", "verdict": cmp_.verdict,
           "comparison": cmp_.to_json(), "real": real.to_json(),
           "sim": {"inputs": sim.inputs, "metrics": sim.metrics,
                   "replications": [r.metrics for r in sim.replications]},
           "calibration": cal}
    text = json.dumps(jsonable(json.loads(json.dumps(doc, default=str))), indent=2)
    try:
        atomic_write_text(path, text)
    except InputError as e:
        raise bad_input(e)


def _write_outcomes(path: Path, tr: Any, real: Any, settings: Any, cl: Any,
                    time_scale: float) -> None:
    from gpusim.real.outcomes import write_outcomes
    try:
        for p in write_outcomes(path, tr, real, settings, time_scale=time_scale, cluster=cl):
            err().print(f"[dim]wrote outcomes {escape(str(p))}[/]", highlight=False)
    except InputError as e:
        raise bad_input(e)


def _print_report(cmp_: Any, n_tasks: int, time_scale: float, observed: bool = False) -> None:
    o = out()
    o.print(comparison_table(cmp_, title=title(cmp_, n_tasks, time_scale, observed=observed)))
    wt = cmp_.wait_tests
    if "ks_statistic" in wt:
        o.print(f"wait distributions: KS D={wt['ks_statistic']:.3f} p={wt['ks_pvalue']:.3g}; "
                f"Anderson-Darling A={wt.get('ad_statistic', float('nan')):.3f} "
                f"p~{wt.get('ad_pvalue_capped', float('nan')):.3g} (information only: "
                f"dependent waits, ties)", highlight=False)
    if "ks_queued_statistic" in wt:
        o.print(f"waits of tasks that queued ({wt['n_queued_real']} real, "
                f"{wt['n_queued_sim']} sim): KS D={wt['ks_queued_statistic']:.3f} "
                f"p={wt['ks_queued_pvalue']:.3g}", highlight=False)
    lt = cmp_.lateness
    if lt:
        o.print(f"replay timing: start lateness p95 {lt['start_p95_s'] * 1e3:.2f} ms, sleep "
                f"overshoot p95 {lt['sleep_overshoot_p95_s'] * 1e3:.2f} ms, hold overshoot "
                f"p95 {lt['hold_overshoot_p95_s'] * 1e3:.2f} ms", highlight=False)
    for n in cmp_.notes:
        o.print(f"note: {escape(n)}", highlight=False)


def _parse_tolerances(items: list[str] | None) -> dict[str, float | None] | None:
    """--tolerance ROW=VALUE items; a bad one ends in exit 2 naming it."""
    from gpusim.real.comparison import ROWS

    if not items:
        return None
    names = {n for n, _, _ in ROWS}
    tol: dict[str, float | None] = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            v = None if value.strip().lower() == "none" else float(value)
        except ValueError:
            v = -1.0
        if name not in names or (v is not None and not (0 <= v < 100)):
            raise fail(f"--tolerance {item!r}: want ROW=VALUE (VALUE >= 0 or none), ROW one of "
                       f"{', '.join(sorted(names))}", ExitCode.BAD_INPUT)
        tol[name] = v
    return tol


def _observed(tr: Any, settings: Any, cl: Any, *, seeds: int, seed: int,
              tolerances: dict[str, float | None] | None, json_out: Path | None) -> typer.Exit:
    """`validate --observed`: the model beside the trace's own observed outcomes."""
    from gpusim.real.validate import validate_observed

    try:
        cmp_, sim, info = validate_observed(tr, settings, cluster=cl, seeds=seeds, seed=seed,
                                            tolerances=tolerances)
    except InputError as e:
        raise bad_input(e)
    if json_out is not None:
        doc = {"schema": "gpusim.validate.observed/1", "verdict": cmp_.verdict,
               "comparison": cmp_.to_json(), "observed": info,
               "sim": {"inputs": sim.inputs, "metrics": sim.metrics}}
        try:
            atomic_write_text(json_out, json.dumps(jsonable(json.loads(json.dumps(
                doc, default=str))), indent=2))
        except InputError as e:
            raise bad_input(e)
    _print_report(cmp_, len(tr), 1.0, observed=True)
    return _verdict_exit(cmp_, 1, len(tr))


def _verdict_exit(cmp_: Any, runs: int, n_tasks: int, *, lanes: int = 1,
                  run_s: float | None = None) -> typer.Exit:
    """Print the verdict line (and, when INCONCLUSIVE, what to do about it, with what the runs
    it asks for cost at ``lanes``, a real run lasting ``run_s``); the exit code."""
    from gpusim.real.comparison import advice

    v = cmp_.verdict
    o = out()
    if v == "PASS":
        o.print("[green]validation PASSES[/]")
    elif v == "FAIL":
        failed = ", ".join(r.label for r in cmp_.rows if r.verdict == "FAIL")
        o.print(f"[red]validation FAILS[/] ({escape(failed)})")
    elif cmp_.rows_verdict == "FAIL":  # a FAIL the replay's own stalls may explain
        failed = ", ".join(r.label for r in cmp_.rows if r.verdict == "FAIL")
        o.print(f"[yellow]validation INCONCLUSIVE: {escape(failed)} outside tolerance, but "
                f"{escape(cmp_.off_schedule or '')}; the host, not the model, may be what "
                "differs: fewer --lanes or a quieter host[/]")
    else:
        o.print("[yellow]validation INCONCLUSIVE: an interval straddles its tolerance (too "
                "little data to say)[/]")
        o.print(escape(advice(cmp_, runs=runs, tasks=n_tasks, lanes=lanes, run_s=run_s)),
                highlight=False)
    return typer.Exit(int(VERDICT_EXIT[v]))


def validate(
    trace: Annotated[Path, typer.Argument(help="trace file (JSONL or CSV)")],
    config: Annotated[Path, typer.Option("--config", "-c",
                                         help="YiVideo config.yml or bare gpu_lock YAML")],
    redis_url: Annotated[Optional[str], typer.Option(
        "--redis-url", help="Redis to replay against; default: a private redis-server")] = None,
    time_scale: Annotated[float, typer.Option(
        "--time-scale", help="divide trace and config times by this factor")] = 1.0,
    runs: RunsOpt = None,
    hold: Annotated[str, typer.Option(
        "--hold", help="sleep | cuda (real matmul loop; without CUDA: skipped, exit 3)")] = "sleep",
    seeds: SeedsOpt = None,
    lanes: LanesOpt = None,
    json_out: Annotated[Optional[Path], typer.Option(
        "--json", "-o", help="write results here (checked before the run; written before the table)")
    ] = None,
    cluster: Annotated[Optional[Path], typer.Option(
        "--cluster", help="cluster file; default: one node, Redis calibrated on the spot")] = None,
    seed: Annotated[int, typer.Option("--seed", help="base seed (jitter streams)")] = 0,
    calibrate: Annotated[Optional[bool], typer.Option(
        "--calibrate/--no-calibrate",
        help="calibrate Redis CPU on the spot; default: only without --cluster")] = None,
    reference: Annotated[Optional[bool], typer.Option(
        "--reference/--no-reference",
        help="run a CPU control load on a second private redis-server during each run; "
             "default: when calibrating a Redis on this host one run at a time (--lanes 1)")
    ] = None,
    outcomes: Annotated[Optional[Path], typer.Option(
        "--outcomes", help="write each real run's per-task outcomes as an observed trace "
                           "(wait_s, outcome, attempts, config_digest); with --runs N > 1: "
                           "OUT-run1.jsonl ... OUT-runN.jsonl")] = None,
    yivideo_log: Annotated[Optional[Path], typer.Option(
        "--yivideo-log", help="the lock clients also write YiVideo's lock log lines (logger "
                              "'locks', YiVideo's format) to this file, for `gpusim trace "
                              "import-yivideo-logs`")] = None,
    observed: ObservedOpt = False,
    tolerance: ToleranceOpt = None,
    config_change: ConfigChangeOpt = [],
    schedule: ScheduleOpt = None,
    pace: PaceOpt = True,
) -> None:
    """Replay a trace against a real Redis, simulate it, and judge the model.

    Verdict (an equivalence test): PASS when every judged row's 95% interval lies inside its
    tolerance, FAIL when one lies wholly outside, INCONCLUSIVE otherwise (also a FAIL when real
    runs lost the replay's schedule and the others do not FAIL on their own).
    Exit codes: 0 PASS, 1 FAIL (or Redis died mid-run), 2 bad input, 3 INCONCLUSIVE or
    --hold cuda skipped without CUDA, 130 interrupted.
    """
    runs, seeds, lanes = _counts(runs, seeds, lanes, one_at_a_time=bool(
        redis_url is not None or reference or yivideo_log is not None or observed))
    _check_options(hold, time_scale, json_out)
    tol = _parse_tolerances(tolerance)
    if observed:
        if config_change or schedule is not None:  # the record already ran under its configs
            raise bad_input(InputError("not used with --observed (the trace's own "
                                       "config_digest says which config each task ran under)",
                                       field="--config-change/--schedule"))
        tr, settings, cl = _load_inputs(trace, config, cluster)
        raise _observed(tr, settings, cl, seeds=seeds, seed=seed, tolerances=tol,
                        json_out=json_out)
    from gpusim.real.outcomes import outcome_paths
    outcome_files = outcome_paths(outcomes, runs) if outcomes is not None else []
    _check_outputs(*outcome_files, yivideo_log)
    tr, settings, cl = _load_inputs(trace, config, cluster)
    changes = _changes(config_change, schedule)
    partial = (json_out.with_name(json_out.stem + ".partial.json") if json_out is not None
               else Path("gpusim-validate.partial.json"))
    cmp_, real, sim, cal = _run(tr, settings, cl, partial, redis_url=redis_url,
                                time_scale=time_scale, runs=runs, seeds=seeds, seed=seed,
                                hold=hold, calibrate=calibrate, reference=reference,
                                yivideo_log=yivideo_log, tolerances=tol, changes=changes,
                                pace=pace, lanes=lanes)
    if json_out is not None:  # results first: a closed stdout must not lose them
        _write_json(json_out, cmp_, real, sim, cal)
    if outcomes is not None:
        _write_outcomes(outcomes, tr, real, settings, cl, time_scale)
    _print_report(cmp_, len(tr), time_scale)
    run_s = sum(r.elapsed_s for r in real.runs) / len(real.runs) if real.runs else None
    raise _verdict_exit(cmp_, runs, len(tr), lanes=lanes, run_s=run_s)


def calibrate_redis(
    redis_url: Annotated[Optional[str], typer.Option(
        "--redis-url", help="Redis to measure (loopback or one you name); default: a private "
                            "redis-server")] = None,
    out_path: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="write the cluster file's redis section (YAML) here")] = None,
    seconds: Annotated[float, typer.Option(
        "--seconds", help="load per command type (bounded)")] = 0.3,
    gap_s: Annotated[Optional[float], typer.Option(
        "--gap-s", help="also measure the wake-up cost at this mean gap between commands "
                        "(for an otherwise idle Redis)")] = None,
) -> None:
    """Measure Redis CPU per lock command and the client round trip (a few seconds).

    Exit codes: 0 done, 2 bad input or an unreachable Redis, 130 interrupted.
    """
    from gpusim.real.calibrate import CalibrationError, calibrate_redis as run_cal
    from gpusim.real.server import PrivateRedis

    if seconds <= 0 or seconds > 10:
        raise fail("--seconds must be in (0, 10]", ExitCode.BAD_INPUT)
    _check_outputs(out_path)
    owned = None
    try:
        if redis_url is None:
            owned = PrivateRedis().start()
            redis_url = owned.url
            err().print("[dim]no --redis-url: measuring a private redis-server[/]")
        res = run_cal(redis_url, seconds_per_command=seconds, wakeup_gap_s=gap_s, out=out_path)
    except CalibrationError as e:
        raise fail(str(e), ExitCode.BAD_INPUT)
    finally:
        if owned is not None:
            owned.stop()
    from rich.table import Table
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
    out().print(t)
    if out_path is not None:
        out().print(f"wrote {escape(str(out_path))}")


def register(app: typer.Typer) -> None:
    """Add `validate` and `calibrate-redis` to the main `gpusim` app."""
    app.command("validate", epilog=VERDICT_HELP + EXIT_CODES_HELP)(validate)
    app.command("calibrate-redis", epilog=EXIT_CODES_HELP)(calibrate_redis)
