"""`gpusim tune` and `gpusim report`: the advisor's commands (the CLI alone imports advisor).

Exit codes: tune 0 recommends, 1 nothing feasible, 2 bad input, 130 interrupted (the study is
kept in its storage: the same command resumes it). report 0, 2 bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from gpusim.cli.common import (EXIT_CODES_HELP, ExitCode, bad_input, check_outputs,
                               check_seed_option, err, fail, out, set_interrupt_note)
from gpusim.errors import InputError

TUNE_HELP = """\
Search the gpu_lock settings for a config that passes every gate, or show why none does.

Judged against today's config (--baseline) on TRACE. Writes rec.json (schema
gpusim.recommendation/1; --schema prints its JSON Schema). The study is kept in --storage
(default: a journal file beside --out), so an interrupted run resumes with the same command,
and any number of `gpusim tune` processes with one storage and study name share one study."""


def register(app: typer.Typer) -> None:
    app.command("tune", help=TUNE_HELP, epilog=EXIT_CODES_HELP)(tune_command)
    app.command("report", epilog=EXIT_CODES_HELP)(report_command)


def tune_command(
    trace: Annotated[Optional[Path], typer.Argument(
        help="Trace file (.jsonl or .csv)", show_default=False)] = None,
    baseline: Annotated[Optional[Path], typer.Option(
        help="Today's config.yml (the config to beat)", show_default="required")] = None,
    out_path: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="rec.json to write", show_default="required")] = None,
    cluster: Annotated[Optional[Path], typer.Option(
        "--cluster", "-k", help="Cluster YAML", show_default="one host, one GPU")] = None,
    thresholds: Annotated[Optional[Path], typer.Option(
        help="Gate thresholds YAML", show_default="the spec's gates")] = None,
    space: Annotated[Optional[Path], typer.Option(
        help="Search space YAML (ranges per setting)", show_default="built in")] = None,
    trials: Annotated[int, typer.Option(min=1, max=100_000,
                                        help="Complete trials the study reaches")] = 100,
    replications: Annotated[int, typer.Option(
        "--replications", "-r", min=1, max=1000, help="Replications per trial")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the sampler and the simulations",
                                      callback=check_seed_option)] = 0,
    storage: Annotated[Optional[str], typer.Option(
        help="Optuna storage: sqlite:///f.db, postgresql://..., a journal file, redis://...",
        show_default="a journal file beside --out")] = None,
    study_name: Annotated[Optional[str], typer.Option(
        help="Study name", show_default="derived from the inputs")] = None,
    jobs: Annotated[int, typer.Option(min=1, max=256, help="Worker processes here")] = 1,
    check_replications: Annotated[int, typer.Option(
        min=2, max=1000, help="Replications of the re-check on fresh seeds")] = 10,
    check_candidates: Annotated[int, typer.Option(
        min=1, max=100, help="Best trials re-checked on fresh seeds")] = 5,
    per_type_trials: Annotated[int, typer.Option(
        min=0, max=10_000, help="Trials of the per-task-type max_wait_time what-if")] = 30,
    schema: Annotated[bool, typer.Option(
        "--schema", help="Print the JSON Schema of rec.json and exit")] = False,
) -> None:
    if schema:
        from advisor.recommendation import json_schema
        out().file.write(json_schema())
        raise typer.Exit(ExitCode.OK)
    missing = [n for n, v in (("TRACE", trace), ("--baseline", baseline), ("--out", out_path))
               if v is None]
    if missing:
        raise fail(f"missing {', '.join(missing)} (see 'gpusim tune --help')")
    try:
        rec, _ = _run(trace, baseline, out_path, cluster, thresholds, space, storage,
                      study_name, dict(trials=trials, replications=replications, seed=seed,
                                       jobs=jobs, check_replications=check_replications,
                                       check_candidates=check_candidates,
                                       per_type_trials=per_type_trials))
    except InputError as e:
        raise bad_input(e) from None
    except (KeyboardInterrupt, typer.Exit):
        raise
    except Exception as e:  # a worker's error: one line, the study keeps what it finished
        raise fail(f"tune stopped: {type(e).__name__}: {e}; the study keeps its finished "
                   f"trials: fix the cause and run the same command to resume",
                   ExitCode.FAIL) from None
    _print(rec, out_path)
    raise typer.Exit(ExitCode.OK if rec.status == "recommended" else ExitCode.FAIL)


def _run(trace, baseline, out_path, cluster, thresholds, space, storage, study_name, opts):
    from gpusim.acceptance import load_thresholds
    from gpusim.cluster import default_cluster, load_cluster
    from gpusim.config import load_lock_settings
    from gpusim.output import atomic_write_text
    from gpusim.traces.format import load_trace

    from advisor.space import load_space
    from advisor.tune import TuneOptions, tune

    check_outputs(out_path)
    tr = load_trace(trace)
    base = load_lock_settings(baseline)
    k = load_cluster(cluster) if cluster is not None else default_cluster()
    th = load_thresholds(thresholds)
    sp = load_space(space)
    journal = out_path.with_name(out_path.name + ".journal")
    options = TuneOptions(storage=storage, journal=journal, study_name=study_name, **opts)
    set_interrupt_note(f"the study is kept in {storage or journal}: run the same command to "
                       f"resume it; no rec.json was written")
    with _progress_bar(options.trials) as update:
        rec = tune(tr, base, cluster=k, thresholds=th, space=sp, options=options,
                   on_trial=update)
    atomic_write_text(out_path, rec.dumps())
    return rec, journal


class _progress_bar:
    """A rich progress bar on stderr (trials complete in the study / target)."""

    def __init__(self, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
        self.progress = Progress("[progress.description]{task.description}", BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=err(),
                                 transient=True)
        self.task = self.progress.add_task("trials", total=total)

    def __enter__(self):
        self.progress.start()
        return lambda done, total: self.progress.update(self.task, completed=done, total=total)

    def __exit__(self, *exc) -> None:
        self.progress.stop()


def _print(rec, out_path: Path) -> None:
    con = out()
    if rec.status == "recommended":
        con.print(f"[green]recommended[/] ({out_path}): paste into config.yml", highlight=False)
        con.print(rec.recommended.yaml, highlight=False, markup=False)
    else:
        con.print(f"[red]infeasible[/] ({out_path}): binding gates: "
                  f"{', '.join(rec.binding_gates) or 'none'}", highlight=False)
    for line in rec.explanation:
        con.print(f"- {line}", highlight=False, markup=False)


def report_command(
    rec_path: Annotated[Path, typer.Argument(help="rec.json written by gpusim tune")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Directory for report.md, "
                                          "report.html and the PNG plots")],
) -> None:
    """Write report.md, PNG plots and one self-contained report.html from a rec.json.

    Plots: the Pareto front, wait curves per task type (give-ups censored), headroom,
    importances."""
    from advisor.recommendation import load_recommendation
    from advisor.report import write_report
    try:
        rec = load_recommendation(str(rec_path))
        paths = write_report(rec, out_dir)
    except InputError as e:
        raise bad_input(e) from None
    for p in paths:
        out().print(str(p), highlight=False)
