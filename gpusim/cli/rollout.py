"""`gpusim history`, `gpusim rollback` and `gpusim impact`: the config history, rolling back to
a stable config, and what a change did (GPU_LOCK_CONFIG_004 and 005; advisor.rollout).

Exit codes: history add/list 0, 2 bad input or a corrupt history (naming file and line).
rollback plan 0, 1 no stable config to go back to. rollback simulate 0 recovered within the
spec's 5 minutes, 1 not. impact 0 keep or adjust, 1 rollback, 3 insufficient data or the
intervals do not decide.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from gpusim.cli.common import (EXIT_CODES_HELP, ExitCode, bad_input, check_outputs,
                               check_seed_option, fail, out)
from gpusim.errors import InputError

history_app = typer.Typer(help="The append-only config history (GPU_LOCK_CONFIG_004).",
                          no_args_is_help=True, epilog=EXIT_CODES_HELP)
rollback_app = typer.Typer(help="Roll back to the last stable config, and how long it takes.",
                           no_args_is_help=True, epilog=EXIT_CODES_HELP)

HistoryOpt = Annotated[Path, typer.Option("--history", "-H", help="History file (JSONL)")]


def register(app: typer.Typer) -> None:
    app.add_typer(history_app, name="history",
                  help="The append-only config history (GPU_LOCK_CONFIG_004).")
    app.add_typer(rollback_app, name="rollback",
                  help="Roll back to the last stable config, and how long it takes.")
    app.command("impact", epilog=EXIT_CODES_HELP)(impact_command)


def _dumps(doc: object) -> str:
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


@history_app.command("add", epilog=EXIT_CODES_HELP)
def history_add(
    config: Annotated[Path, typer.Argument(help="The config.yml now applied")],
    history: HistoryOpt,
    why: Annotated[str, typer.Option(help="Why it changes (the audit log's reason)")],
    who: Annotated[Optional[str], typer.Option(help="Who changes it",
                                               show_default="$USER, else unknown")] = None,
    rec: Annotated[Optional[Path], typer.Option(
        help="The rec.json it came from", show_default="none")] = None,
    stable: Annotated[bool, typer.Option("--stable", help="Known good: a rollback target",
                                         show_default="off")] = False,
    at: Annotated[Optional[str], typer.Option(
        help="When (ISO 8601; naive is UTC)", show_default="now")] = None,
) -> None:
    """Append CONFIG to the history: values as loaded (GPU_LOCK_* overrides included), digest,
    who, why, the rec.json, the hash chain. A corrupt history is refused (exit 2)."""
    from advisor.rollout.history import NewEntry, append_entry
    try:
        entry = append_entry(history, NewEntry(str(config), why, who,
                                               None if rec is None else str(rec), stable, at))
    except InputError as e:
        raise bad_input(e) from None
    d = entry.doc
    out().print(f"#{d['seq']} {d['at']} {d['config_digest']}{' stable' if d['stable'] else ''}"
                f" appended to {history} (head {entry.line_sha256[:16]})", highlight=False,
                markup=False)


@history_app.command("list", epilog=EXIT_CODES_HELP)
def history_list(
    history: HistoryOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table",
                                          show_default="a table")] = False,
) -> None:
    """Verify the history (an edited, removed or cut line: exit 2 naming it) and list it."""
    from rich.table import Table

    from advisor.rollout.history import entry_row, head_sha256, read_history
    try:
        entries = read_history(history)
    except InputError as e:
        raise bad_input(e) from None
    rows = [entry_row(e) for e in entries]
    if as_json:
        out().file.write(_dumps({"history": str(history), "head_sha256": head_sha256(entries),
                                 "entries": rows}))
        return
    t = Table(title=f"{history}: {len(rows)} entries, hash chain intact")
    for col in ("seq", "at", "who", "stable", "config_digest", "source", "rec", "why"):
        t.add_column(col)
    for r in rows:
        rec = r["rec"]
        t.add_row(str(r["seq"]), r["at"], r["who"], "yes" if r["stable"] else "",
                  r["config_digest"], str(r["source"]),
                  "" if rec is None else f"{rec['status']} {rec['path']}", r["why"])
    con = out()
    con.print(t)
    con.print(f"head sha256 {head_sha256(entries)} (keep it elsewhere: lines removed from the "
              f"end leave no trace in the file)", highlight=False)


@rollback_app.command("plan", epilog=EXIT_CODES_HELP)
def rollback_plan(
    history: HistoryOpt,
    json_out: Annotated[Optional[Path], typer.Option(
        "--json", "-o", help="Write the plan JSON", show_default="not written")] = None,
) -> None:
    """The last stable config before the current one: the gpu_lock block to restore, the
    GPU_LOCK_* overrides, the checks to run after. Exit 1 when there is none."""
    from advisor.rollout.history import read_history
    from advisor.rollout.rollback import NoStableConfig, plan_rollback
    from gpusim.output import atomic_write_text
    try:
        check_outputs(json_out)
        entries = read_history(history)
        try:
            plan = plan_rollback(entries, str(history))
        except NoStableConfig as e:
            raise fail(str(e), ExitCode.FAIL) from None
        doc = plan.to_json()
        if json_out is not None:
            atomic_write_text(json_out, _dumps(doc))
    except InputError as e:
        raise bad_input(e) from None
    _print_plan(doc)


def _print_plan(doc: dict) -> None:
    con = out()
    t, c = doc["target"], doc["current"]
    con.print(f"roll back #{c['seq']} ({c['config_digest']}) to #{t['seq']} "
              f"({t['config_digest']}, {t['at']}, {t['who']}: {t['why']})",
              highlight=False, markup=False)
    for k, (now, then) in doc["changed"].items():
        con.print(f"  {k}: {now} -> {then}", highlight=False, markup=False)
    con.print("\n# config.yml", highlight=False, markup=False)
    con.print(doc["yaml"], highlight=False, markup=False, end="")
    con.print("\n# or, on every GPU service", highlight=False, markup=False)
    for line in doc["env"]:
        con.print(line, highlight=False, markup=False)
    con.print("\nsteps:", highlight=False)
    for i, s in enumerate(doc["steps"], 1):
        con.print(f"  {i}. {s}", highlight=False, markup=False)
    con.print("checks (each within 300 s):", highlight=False)
    for ch in doc["checks"]:
        con.print(f"  - {ch['check']}: {ch['healthy']} ({ch['source']})", highlight=False,
                  markup=False)


@rollback_app.command("simulate", epilog=EXIT_CODES_HELP)
def rollback_simulate(
    trace: Annotated[Path, typer.Argument(help="Trace file (.jsonl or .csv)")],
    bad: Annotated[Path, typer.Option(help="The config in force until --at")],
    good: Annotated[Path, typer.Option(help="The config rolled back to at --at")],
    at: Annotated[str, typer.Option(help="Switch time: trace seconds, or ISO 8601 for a "
                                         "trace with timestamps")],
    cluster: Annotated[Optional[Path], typer.Option(
        "--cluster", "-k", help="Cluster YAML", show_default="one host, one GPU")] = None,
    seed: Annotated[int, typer.Option(help="Seed, 0 to 2**64-1 (both runs: CRN)",
                                      callback=check_seed_option)] = 0,
    replications: Annotated[int, typer.Option("--replications", "-r", min=1, max=1000,
                                              help="Replications of each run")] = 3,
    window: Annotated[float, typer.Option(min=1, max=86400,
                                          help="Window of the band check, seconds")] = 60.0,
    json_out: Annotated[Optional[Path], typer.Option(
        "--json", "-o", help="Write the result JSON", show_default="not written")] = None,
) -> None:
    """Run TRACE under --bad until --at, then --good, beside --good throughout (same seeds),
    and report recovery_s: from when waits and timeouts stay in the baseline band for 10
    minutes (not worse than --good with confidence, windows of too few tasks judged together)
    with the backlog built up under --bad drained, against the spec's 5 minutes.

    Exit 0 recovered within 300 s, 1 not."""
    from advisor.rollout.impact import parse_change_time
    from advisor.rollout.recovery import RecoveryOptions, rollback_report
    from gpusim.cluster import default_cluster, load_cluster
    from gpusim.config import load_lock_settings
    from gpusim.output import atomic_write_text
    from gpusim.simulation import check_seed
    from gpusim.traces.format import load_trace
    try:
        check_seed(seed)
        check_outputs(json_out)
        tr = load_trace(trace)
        at_s = parse_change_time(at, tr, field="--at")
        if not 0 <= at_s <= tr.horizon_s:
            raise InputError(f"must be within the trace (0 to {tr.horizon_s:g} s), got "
                             f"{at_s:g}", field="--at")
        b, g = load_lock_settings(bad), load_lock_settings(good)
        opts = RecoveryOptions(window_s=window, seed=seed, replications=replications)
        k = load_cluster(cluster) if cluster is not None else default_cluster()
        doc = rollback_report(tr, b, g, at_s, k, opts)
        if json_out is not None:
            atomic_write_text(json_out, _dumps(doc))
    except InputError as e:
        raise bad_input(e) from None
    con = out()
    for line in doc["summary"]:
        con.print(line, highlight=False, markup=False)
    raise typer.Exit(ExitCode.OK if doc["within_target"] else ExitCode.FAIL)


def impact_command(
    observed: Annotated[Path, typer.Argument(help="Trace with observed outcomes (wait_s, "
                                                  "outcome)")],
    change_time: Annotated[str, typer.Option(help="When the config changed: trace seconds, or "
                                                  "ISO 8601 for a trace with timestamps")],
    before_config: Annotated[Path, typer.Option(help="The config before the change")],
    after_config: Annotated[Path, typer.Option(help="The config after the change")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="impact.json to write")],
    window: Annotated[str, typer.Option(help="Each side's window: 7d, 12h, 30m, 90s")] = "7d",
    predict: Annotated[Optional[Path], typer.Option(
        help="rec.json: its predictions beside what happened", show_default="none")] = None,
    min_tasks: Annotated[Optional[int], typer.Option(
        min=1, help="Fewest observed tasks a window needs",
        show_default="73: a window with no timeout can then show < 5%")] = None,
) -> None:
    """Write the spec's config-impact JSON (GPU_LOCK_CONFIG_005) for one config change.

    Before and after the change (the baseline resets at it), the impact summary and a
    recommendation by documented rules; with --predict, the rec.json's prediction beside it.

    Exit 0 keep (or adjust max_wait_time), 1 roll back, 3 too little data or undecided."""
    from advisor.rollout.impact import ImpactOptions, MIN_TASKS, impact_report, parse_change_time
    from advisor.rollout.impact import parse_duration, require_observed
    from gpusim.config import load_lock_settings
    from gpusim.output import atomic_write_text
    from gpusim.traces.format import load_trace
    try:
        check_outputs(out_path)
        w = parse_duration(window)
        tr = load_trace(observed)
        require_observed(tr)
        t = parse_change_time(change_time, tr)
        a, b = load_lock_settings(before_config), load_lock_settings(after_config)
        pred = None
        if predict is not None:
            import hashlib

            from advisor.recommendation import load_recommendation
            rec = load_recommendation(str(predict))
            pred = (rec, str(predict), hashlib.sha256(predict.read_bytes()).hexdigest())
        opts = ImpactOptions(window_s=w, min_tasks=MIN_TASKS if min_tasks is None else min_tasks)
        doc, code = impact_report(tr, t, a, b, opts, pred)
        atomic_write_text(out_path, _dumps(doc))
    except InputError as e:
        raise bad_input(e) from None
    con = out()
    s = doc["impact_summary"]
    con.print(f"{doc['config_change_time']}: wait {s['wait_time_improvement']}, timeout rate "
              f"{s['timeout_rate_change']}", highlight=False, markup=False)
    con.print(s["recommendation"], highlight=False, markup=False)
    for w_ in doc["details"]["warnings"]:
        con.print(f"note: {w_}", highlight=False, markup=False)
    raise typer.Exit(code)
