"""The `gpusim` command: thin typer commands over `simulate()` and `compare`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from gpusim.cli.common import (EXIT_CODES_HELP, ExitCode, bad_input, check_outputs,
                               check_seed_option, out)
from gpusim.cli.schedule_opts import ConfigChangeOpt, ScheduleOpt, load_changes, print_changes
from gpusim.errors import InputError

# Only what --help needs is imported here; each command imports its own machinery (pydantic
# models, numpy, numba, rich tables) when it runs, so `gpusim --help` starts in a blink.
if TYPE_CHECKING:
    from gpusim.cluster import Cluster

app = typer.Typer(help="Simulate YiVideo's Redis GPU lock on recorded traces.",
                  epilog=EXIT_CODES_HELP, no_args_is_help=True, add_completion=False)


def _cluster(path: Optional[Path], options: list[str]) -> Cluster:
    from gpusim.cluster import default_cluster, load_cluster
    cluster = load_cluster(path) if path is not None else default_cluster()
    if options:
        changes = {}
        fields = type(cluster.options).model_fields
        known = set(fields)
        for opt in options:
            name, _, value = opt.partition("=")
            name = name.strip().replace("-", "_")
            if name not in known:
                raise InputError(f"unknown option; known: {', '.join(sorted(known))}",
                                 field=f"--option {name}")
            if fields[name].annotation is not bool:
                raise InputError("not a true/false option: set it under `options:` in the "
                                 "cluster file (--cluster)", field=f"--option {name}")
            v = value.strip().lower() if value else "true"
            if v not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise InputError("expected true or false", field=f"--option {name}")
            changes[name] = v in ("true", "1", "yes", "on")
        cluster = cluster.with_options(**changes)
    return cluster


TraceArg = Annotated[Path, typer.Argument(help="Trace file (.jsonl or .csv, see traces/README.md)")]
# Every option states its default in --help: a None default says in words what it means.
ClusterOpt = Annotated[Optional[Path], typer.Option(
    "--cluster", "-k", help="Cluster YAML", show_default="one host, one GPU")]
SeedOpt = Annotated[int, typer.Option(help="Seed of every random stream, 0 to 2**64-1",
                                      callback=check_seed_option)]
RepsOpt = Annotated[int, typer.Option("--replications", "-r", min=1,
                                      help="Independent seeded replications (95% intervals)")]
EngineOpt = Annotated[str, typer.Option(
    help="auto (fast, but a run of at most 20,000 poll steps on reference: same records, "
         "no numba start-up), fast (compiled) or reference (SimPy, poll by poll: the "
         "specification)")]
JobsOpt = Annotated[int, typer.Option(min=1, help="Processes for replications")]
# no short flag: -o is the output file on every command
OptionOpt = Annotated[list[str], typer.Option(
    "--option", help="Model option NAME[=true|false], e.g. unique_owner_token (repeatable)",
    show_default="none")]


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_result(res, title: str) -> None:  # noqa: ANN001 - SimulationResult
    from rich.table import Table
    m, ci = res.metrics, res.ci95
    t = Table(title=title, show_lines=False)
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("95% CI", justify="right")
    for key in ("tasks", "success_rate", "timeout_rate", "wait_mean_s", "wait_p50_s",
                "wait_p95_s", "wait_p99_s", "wait_max_s", "wait_held_mean_s", "wait_free_share",
                "queue_wait_mean_s", "latency_mean_s",
                "polls", "redis_ops_per_s", "redis_ops_per_s_peak_1m", "redis_cpu_utilization",
                "redis_cpu_utilization_peak_1m", "gpu_utilization", "lock_expired_while_held",
                "lock_lost_while_held", "double_occupancy_s", "emergency_deletes",
                "missed_wakeups", "event_fallbacks"):
        c = ci.get(key)
        t.add_row(key, _fmt(m.get(key)), f"[{_fmt(c[0])}, {_fmt(c[1])}]" if c else "")
    cmds = m["redis_commands"]
    t.add_row("redis commands", " ".join(f"{k}={_fmt(v)}" for k, v in cmds.items() if v), "")
    out().print(t)
    bt = Table(title="by task type")
    cols = ("tasks", "success_rate", "timeout_rate", "wait_mean_s", "wait_p95_s",
            "latency_mean_s")
    bt.add_column("task type")
    for c in cols:
        bt.add_column(c, justify="right")
    for ttype, tm in res.by_task_type.items():
        bt.add_row(ttype, *(_fmt(tm.get(c)) for c in cols))
    out().print(bt)


@app.command(epilog=EXIT_CODES_HELP)
def simulate(
    trace: TraceArg,
    config: Annotated[Path, typer.Option("--config", "-c",
                                         help="YiVideo config.yml or bare gpu_lock YAML")],
    cluster: ClusterOpt = None,
    seed: SeedOpt = 0,
    replications: RepsOpt = 1,
    engine: EngineOpt = "auto",
    jobs: JobsOpt = 1,
    option: OptionOpt = [],
    json_out: Annotated[Optional[Path], typer.Option(
        "--json", "-o", help="Write the result JSON", show_default="not written")] = None,
    records: Annotated[Optional[Path], typer.Option(
        help="Write per-task records (JSONL)", show_default="not written")] = None,
    config_change: ConfigChangeOpt = [],
    schedule: ScheduleOpt = None,
) -> None:
    """Replay TRACE under one gpu_lock config and report waits, timeouts, safety, Redis load."""
    from gpusim.config import load_lock_settings
    from gpusim.simulation import check_seed, records_jsonl, simulate as run
    from gpusim.output import atomic_write_text
    from gpusim.traces.format import load_trace
    try:
        check_seed(seed)
        check_outputs(json_out, records)  # before the run: a bad path should cost no wait
        tr = load_trace(trace)
        settings = load_lock_settings(config)
        cl = _cluster(cluster, option)
        changes = load_changes(config_change, schedule)
        res = run(tr, settings, cl, seed=seed, replications=replications, engine=engine,
                  jobs=jobs, changes=changes)
        # results first: a closed stdout (`| head`) or a Ctrl-C while printing loses nothing
        if json_out is not None:
            atomic_write_text(json_out, res.dumps())
        if records is not None:
            atomic_write_text(records, "".join(records_jsonl(r.records, r.replication)
                                               for r in res.replications))
    except InputError as e:
        raise bad_input(e) from None
    print_result(res, f"{trace} under {config}")
    print_changes(res)


@app.command(epilog=EXIT_CODES_HELP)
def compare(
    trace: TraceArg,
    baseline: Annotated[Path, typer.Option(help="Today's config.yml")],
    candidate: Annotated[Path, typer.Option(help="The config to judge")],
    cluster: ClusterOpt = None,
    thresholds: Annotated[Optional[Path], typer.Option(
        help="Thresholds YAML", show_default="the spec's GPU_LOCK_CONFIG_001")] = None,
    seed: SeedOpt = 0,
    replications: RepsOpt = 3,
    engine: EngineOpt = "auto",
    jobs: JobsOpt = 1,
    option: OptionOpt = [],
    json_out: Annotated[Optional[Path], typer.Option(
        "--json", "-o", help="Write the comparison JSON", show_default="not written")] = None,
    config_change: ConfigChangeOpt = [],
    schedule: ScheduleOpt = None,
    changes_on: Annotated[str, typer.Option(
        help="Which run the config changes apply to: candidate (the run under test; the "
             "baseline stays today's config) or both")] = "candidate",
) -> None:
    """Replay TRACE under both configs (common random numbers) and apply the spec's gates.

    Exit code 0 when every gate passes, 1 when any fails, 2 on bad input."""
    from rich.table import Table

    from gpusim.acceptance import load_thresholds, summary_rows
    from gpusim.compare import compare as run
    from gpusim.config import load_lock_settings
    from gpusim.output import atomic_write_text
    from gpusim.simulation import check_seed
    from gpusim.traces.format import load_trace
    try:
        check_seed(seed)
        check_outputs(json_out)
        tr = load_trace(trace)
        base_s = load_lock_settings(baseline)
        cand_s = load_lock_settings(candidate)
        th = load_thresholds(thresholds)
        cl = _cluster(cluster, option)
        if changes_on not in ("candidate", "both"):
            raise InputError(f"must be candidate or both, got {changes_on!r}",
                             field="--changes-on")
        changes = load_changes(config_change, schedule)
        cmp_ = run(tr, base_s, cand_s, cl, th, seed=seed, replications=replications,
                   engine=engine, jobs=jobs, changes=changes,
                   baseline_changes=changes if changes_on == "both" else ())
        if json_out is not None:
            atomic_write_text(json_out, cmp_.dumps())
    except InputError as e:
        raise bad_input(e) from None
    base, cand = cmp_.baseline, cmp_.candidate
    side = Table(title=f"{trace}: baseline {baseline} vs candidate {candidate}")
    side.add_column("metric")
    side.add_column("baseline", justify="right")
    side.add_column("candidate", justify="right")
    for k, b, c in summary_rows(base, cand):
        side.add_row(k, _fmt(b), _fmt(c))
    out().print(side)
    rows = cmp_.criteria
    t = Table(title="acceptance (GPU_LOCK_CONFIG_001; lock safety; peak-minute Redis CPU)")
    for col in ("criterion", "value", "95% CI", "threshold", "margin", "result"):
        t.add_column(col, justify="left" if col == "criterion" else "right")
    for r in rows:
        t.add_row(r.name, _fmt(r.value),
                  f"[{_fmt(r.ci95[0])}, {_fmt(r.ci95[1])}]" if r.ci95 else "",
                  f"{r.op} {_fmt(r.threshold)}", _fmt(r.margin),
                  "[green]PASS[/]" if r.passed else "[red]FAIL[/]")
    out().print(t)
    passed = cmp_.passed
    out().print("[green]all gates pass[/]" if passed else "[red]at least one gate fails[/]")
    raise typer.Exit(ExitCode.OK if passed else ExitCode.FAIL)


def _mount_subcommands() -> None:
    from gpusim.cli.trace import trace_app
    app.add_typer(trace_app, name="trace", help="Make, import and check traces.")
    from gpusim.cli.real import register
    register(app)
    from gpusim.cli.tune import register as register_advisor
    register_advisor(app)
    from gpusim.cli.rollout import register as register_rollout
    register_rollout(app)
    from gpusim.cli.canary import canary_app
    app.add_typer(canary_app, name="canary", help="Plan and judge a staged canary rollout.")


_mount_subcommands()
