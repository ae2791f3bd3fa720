"""`gpusim canary plan` and `gpusim canary judge` (GPU_LOCK_CONFIG_002), over advisor.rollout.

Exit codes: plan 0 written, 1 the rec.json is infeasible (nothing to roll out), 2 bad input;
judge 0 PASS, 1 FAIL, 2 bad input, 3 INSUFFICIENT_DATA, 4 MARGINAL; 130 interrupted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from gpusim.cli.common import (ExitCode, bad_input, check_outputs, check_seed_option, fail,
                               out)
from gpusim.errors import InputError

CANARY_EXIT_HELP = ("Exit codes: plan 0 written, 1 infeasible rec.json; judge 0 PASS, 1 FAIL, "
                    "3 INSUFFICIENT_DATA, 4 MARGINAL; both 2 bad input, 130 interrupted.")

canary_app = typer.Typer(help="Plan a staged canary rollout of a recommended config, and judge "
                              "a stage from observed outcomes (GPU_LOCK_CONFIG_002).",
                         no_args_is_help=True, add_completion=False, epilog=CANARY_EXIT_HELP)


def _trace_for(rec: Any, rec_path: Path, given: Optional[Path]) -> tuple[Any, list[str]]:
    """The trace to simulate: --trace, else rec.json's own (as given, else beside rec.json);
    refused when it is not the trace the recommendation was tuned on, unless --trace says so."""
    from gpusim.simulation import trace_digest
    from gpusim.traces.format import load_trace

    notes = []
    if given is not None:
        tr = load_trace(given)
    else:
        path = Path(rec.inputs.trace.path)
        if not path.exists() and (rec_path.parent / path).exists():
            path = rec_path.parent / path
        if not path.exists():
            raise InputError(f"the trace {rec.inputs.trace.path} is not found (give --trace)",
                             file=str(rec_path), field="inputs.trace.path")
        tr = load_trace(path)
    if trace_digest(tr) != rec.inputs.trace.sha256:
        if given is None:
            raise InputError(f"{tr.source} is not the trace the recommendation was tuned on "
                             f"(sha256 differs); give --trace to plan on it anyway",
                             file=str(rec_path), field="inputs.trace.sha256")
        notes.append(f"{tr.source} is not the trace the recommendation was tuned on.")
    return tr, notes


def _cluster_for(rec: Any, path: Optional[Path]) -> Any:
    """--cluster, else the cluster rec.json was tuned on (its summary, node configs dropped:
    the plan sets every node's config)."""
    from gpusim.cluster import ClusterSpec, build_cluster, load_cluster

    if path is not None:
        return load_cluster(path)
    c = rec.inputs.cluster
    spec = ClusterSpec(nodes=[{"name": n["name"], "gpus": n["gpus"]} for n in c["nodes"]],
                       gpu_policy=c["gpu_policy"], workers_per_service=c["workers_per_service"],
                       services=c.get("services"), redis=c["redis"], options=c["options"])
    return build_cluster(spec, source=f"{c.get('source')} (from rec.json)")


@canary_app.command("plan", epilog=CANARY_EXIT_HELP)
def plan_command(
    rec_path: Annotated[Path, typer.Argument(help="rec.json written by gpusim tune")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="plan.json to write")],
    cluster: Annotated[Optional[Path], typer.Option(
        "--cluster", "-k", help="Cluster YAML",
        show_default="the one rec.json was tuned on")] = None,
    stages: Annotated[Optional[Path], typer.Option(
        help="Stages, gates, rollback triggers YAML",
        show_default="10% for 24 h, 50% for 48 h, all after approval")] = None,
    argo: Annotated[Optional[Path], typer.Option(
        help="Also write Argo Rollouts AnalysisTemplates (YAML)",
        show_default="not written")] = None,
    metrics: Annotated[Optional[Path], typer.Option(
        help="Prometheus metric names YAML for --argo", show_default="built in")] = None,
    trace: Annotated[Optional[Path], typer.Option(
        help="Plan on this trace", show_default="the one rec.json was tuned on")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the simulations",
                                      callback=check_seed_option)] = 0,
    replications: Annotated[int, typer.Option("--replications", "-r", min=2, max=1000,
                                              help="Replications per stage")] = 5,
) -> None:
    """Simulate the staged rollout of rec.json's config and write the plan (plan.json)."""
    from gpusim.config import config_digest
    from gpusim.output import atomic_write_text

    from advisor.recommendation import load_recommendation
    from advisor.rollout.argo import analysis_templates, load_metric_names
    from advisor.rollout.plan import Refused, check_rollable, dumps, make_plan, settings_of
    from advisor.rollout.stages import load_stages
    try:
        check_outputs(out_path, argo)
        if metrics is not None and argo is None:
            raise InputError("--metrics names Prometheus metrics for --argo: give --argo too",
                             field="--metrics")
        rec = load_recommendation(str(rec_path))
        spec = load_stages(stages)
        names = load_metric_names(metrics) if argo is not None else None
        try:
            check_rollable(rec, str(rec_path))
        except Refused as e:
            raise fail(str(e), ExitCode.FAIL) from None
        tr, notes = _trace_for(rec, rec_path, trace)
        k = _cluster_for(rec, cluster)
        digests = {"candidate": config_digest(settings_of(rec.recommended.gpu_lock, "c")),
                   "baseline": config_digest(settings_of(rec.inputs.baseline["gpu_lock"], "b"))}
        plan = make_plan(rec, str(rec_path), tr, k, spec, seed=seed, replications=replications,
                         digests=digests)
        plan["notes"] += notes
        atomic_write_text(out_path, dumps(plan))
        if argo is not None:
            atomic_write_text(argo, analysis_templates(plan, names))
    except InputError as e:
        raise bad_input(e) from None
    _print_plan(plan, out_path, argo)


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.3g}%"


def _print_plan(plan: dict, out_path: Path, argo: Optional[Path]) -> None:
    con = out()
    con.print(f"canary plan written to {out_path}" + (f", AnalysisTemplates to {argo}"
                                                      if argo else ""), highlight=False)
    for st in plan["stages"]:
        c = st["predicted"]["canary"]
        hours = st["expected_hours_to_min"]
        con.print(
            f"stage {st['index']} {st['name']}: {len(st['canary_nodes'])} canary / "
            f"{len(st['control_nodes'])} control node(s) ({st['rounding']}), "
            f"{st['duration_h']:g} h; canary timeouts {_pct(c['timeout_rate']['mean'])}, "
            f"success {_pct(c['success_rate']['mean'])}; predicted {st['predicted_verdict']}; "
            f"needs {st['min_acquisitions']} acquisitions"
            + (f" (~{hours:.3g} h at the canary's rate)" if hours is not None else ""),
            highlight=False, markup=False)


@canary_app.command("judge", epilog=CANARY_EXIT_HELP)
def judge_command(
    plan_path: Annotated[Path, typer.Argument(help="plan.json written by gpusim canary plan")],
    canary: Annotated[list[Path], typer.Option(
        help="Observed trace of the canary nodes (repeatable)", show_default="required")] = [],
    control: Annotated[list[Path], typer.Option(
        help="Observed trace of the control nodes (repeatable)",
        show_default="required below 100%")] = [],
    stage: Annotated[int, typer.Option(min=1, max=20, help="Stage number (1 = first)")] = 1,
    redis_cpu: Annotated[Optional[float], typer.Option(
        min=0, max=1000, help="Observed peak-minute Redis CPU utilisation (0.8 = 80%)",
        show_default="not judged")] = None,
    json_out: Annotated[Optional[Path], typer.Option(
        "--json", "-o", help="Write the verdict JSON", show_default="not written")] = None,
) -> None:
    """Judge a stage from observed per-task outcomes (PASS, MARGINAL, FAIL, INSUFFICIENT_DATA).

    Gates with 95% Wilson intervals, rollback triggers, Mann-Whitney on canary/control waits."""
    from gpusim.output import atomic_write_text
    from gpusim.traces.format import load_trace

    from advisor.rollout.judge import dumps, judge, load_plan
    try:
        check_outputs(json_out)
        plan = load_plan(str(plan_path))
        doc = judge(plan, stage, [load_trace(p) for p in canary],
                    [load_trace(p) for p in control], redis_cpu=redis_cpu)
        if json_out is not None:
            atomic_write_text(json_out, dumps(doc))
    except InputError as e:
        raise bad_input(e) from None
    con = out()
    con.print(f"{doc['verdict']} (stage {doc['stage']['index']} {doc['stage']['name']})",
              highlight=False, markup=False)
    for line in doc["reasons"]:
        con.print(f"- {line}", highlight=False, markup=False)
    raise typer.Exit(doc["exit_code"])
