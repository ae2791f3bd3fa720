"""`gpusim trace ...`: make and convert trace files (thin typer layer over synth and import).

Bad input of any kind (options, spec file, CSV rows) prints the errors, one per line, to stderr
and exits with code 2; the output file is written atomically at the very end, so a failed run
leaves no file behind.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from gpusim.errors import InputError
from gpusim.traces.synth import SynthSpec, load_spec, spec_errors, synthesize
from gpusim.traces.format import Trace, trace_format, write_rows, write_trace
from gpusim.traces.csv_import import DURATION_UNITS, import_csv, parse_mapping

trace_app = typer.Typer(help="Make and convert GPU task traces (synthetic workloads, CSV import).",
                        no_args_is_help=True)

EXIT_BAD_INPUT = 2


class ArrivalKind(str, Enum):
    poisson = "poisson"
    bursty = "bursty"
    diurnal = "diurnal"


class Placement(str, Enum):
    random = "random"
    none = "none"


def _run(fn: Callable[[], None]) -> None:
    try:
        fn()
    except InputError as exc:
        for line in str(exc).splitlines():
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def parse_mix(text: str) -> dict[str, float]:
    """'paddleocr=0.6,ffmpeg=0.4' -> {'paddleocr': 0.6, 'ffmpeg': 0.4}."""
    mix: dict[str, float] = {}
    for item in text.split(","):
        name, sep, weight = item.partition("=")
        name = name.strip()
        try:
            value = float(weight)
        except ValueError:
            value = None
        if not sep or not name or value is None:
            raise InputError(f"{item.strip()!r} is not TYPE=WEIGHT", field="mix")
        if name in mix:
            raise InputError(f"type {name!r} given twice", field="mix")
        mix[name] = value
    return mix


def build_spec(spec_file: Path | None = None, **options) -> SynthSpec:
    """Spec file (or defaults), then the command-line options that were given, on top."""
    spec = load_spec(spec_file) if spec_file is not None else SynthSpec()
    data = spec.model_dump()
    given = {k: v for k, v in options.items() if v is not None}
    if "load" in given and "rate_per_hour" in given:
        raise InputError("give --load or --rate-per-hour, not both", field="load")
    if "load" in given:
        data["rate_per_hour"] = None
    if "rate_per_hour" in given:
        data["load"] = None
    kind = given.pop("arrivals", None)
    if kind is not None and kind != spec.arrivals.kind:
        data["arrivals"] = {"kind": kind}  # another process: its default parameters
    mix = given.pop("mix", None)
    if mix is not None:
        weights = parse_mix(mix)
        unknown = [name for name in weights if name not in spec.types]
        if unknown:
            raise InputError(f"no duration distribution for {', '.join(unknown)}: define the "
                             f"type in --spec (known: {', '.join(spec.types)})", field="mix")
        # The mix lists every type to generate; the others get no share.
        data["types"] = {name: {**data["types"][name], "weight": w} for name, w in weights.items()}
    data.update(given)
    try:
        return SynthSpec.model_validate(data)
    except ValidationError as exc:
        # The spec file alone was valid, so what fails now comes from the options.
        raise spec_errors(exc) from None


def summary(trace: Trace, spec: SynthSpec, seed: int, out: Path) -> str:
    horizon_s = spec.hours * 3600.0
    lines = [f"wrote {out}: {len(trace)} tasks over {spec.hours:g} h, {spec.gpus} GPU(s) on "
             f"{spec.nodes} node(s), {spec.arrivals.kind} arrivals, seed {seed}"]
    for name in trace.task_types:
        holds = [t.duration_s for t in trace.tasks if t.task_type == name]
        lines.append(f"  {name:<16} {len(holds):>7} tasks  mean hold {sum(holds) / len(holds):9.2f} s")
    busy = sum(t.duration_s for t in trace.tasks)
    lines.append(f"offered load per GPU: {busy / (horizon_s * spec.gpus):.3f} "
                 f"(target {spec.offered_load:.3f}, rate {spec.rate_per_s * 3600:.1f}/h)")
    crashed = sum(t.crashed for t in trace.tasks)
    if crashed:
        lines.append(f"crashed holders: {crashed}")
    return "\n".join(lines)


@trace_app.command("synth")
def synth_cmd(
    out: Annotated[Path, typer.Option("--out", help="Output trace (.jsonl or .csv, optionally .gz).")],
    hours: Annotated[float | None, typer.Option(help="Trace length in hours [default: 24].")] = None,
    gpus: Annotated[int | None, typer.Option(help="GPUs in total [default: 1].")] = None,
    nodes: Annotated[int | None, typer.Option(help="Nodes; gpus must be a multiple [default: 1].")] = None,
    load: Annotated[float | None, typer.Option(help="Offered load per GPU [default: 0.5].")] = None,
    rate_per_hour: Annotated[float | None, typer.Option(help="Arrivals per hour (instead of --load).")] = None,
    arrivals: Annotated[ArrivalKind | None, typer.Option(help="Arrival process [default: poisson].")] = None,
    mix: Annotated[str | None, typer.Option(help="Type weights, e.g. paddleocr=0.6,ffmpeg=0.3,faster_whisper=0.1.")] = None,
    crash_prob: Annotated[float | None, typer.Option(help="Chance a holder's worker dies [default: 0].")] = None,
    placement: Annotated[Placement | None, typer.Option(help="random: node/gpu per task; none: unset.")] = None,
    spec: Annotated[Path | None, typer.Option(help="YAML SynthSpec; options given here override it.")] = None,
    seed: Annotated[int, typer.Option(help="Seed: same seed, same bytes.")] = 0,
) -> None:
    """Generate a seeded synthetic YiVideo-like workload."""
    def go() -> None:
        trace_format(str(out))  # reject an unknown suffix before doing any work
        built = build_spec(spec, hours=hours, gpus=gpus, nodes=nodes, load=load,
                           rate_per_hour=rate_per_hour,
                           arrivals=arrivals.value if arrivals else None, mix=mix,
                           crash_prob=crash_prob,
                           placement=placement.value if placement else None)
        trace = synthesize(built, seed)
        _write(lambda: write_trace(trace, out), out)
        typer.echo(summary(trace, built, seed, out))
    _run(go)


@trace_app.command("import")
def import_cmd(
    src: Annotated[Path, typer.Argument(help="Source CSV (optionally .gz).")],
    out: Annotated[Path, typer.Option("--out", help="Output trace (.jsonl or .csv).")],
    arrival_col: Annotated[str, typer.Option(help="Column with the start (arrival) time.")],
    type_col: Annotated[str, typer.Option(help="Column with the task type.")],
    time_format: Annotated[str, typer.Option(help="iso | seconds | epoch | epoch_ms | a strptime pattern (naive = UTC).")] = "iso",
    duration_col: Annotated[str | None, typer.Option(help="Column with the GPU hold time.")] = None,
    duration_unit: Annotated[str, typer.Option(help=f"Unit of --duration-col: {', '.join(DURATION_UNITS)}.")] = "s",
    end_col: Annotated[str | None, typer.Option(help="Column with the end time (duration = end - start).")] = None,
    id_col: Annotated[str | None, typer.Option(help="Column with a unique task id.")] = None,
    node_col: Annotated[str | None, typer.Option(help="Column with the node name.")] = None,
    gpu_col: Annotated[str | None, typer.Option(help="Column with the GPU index.")] = None,
    filter: Annotated[list[str] | None, typer.Option("--filter", help="Keep rows with COL=VALUE / COL!=VALUE (repeatable).")] = None,
    type_map: Annotated[list[str] | None, typer.Option(help="Rename a task type OLD=NEW (repeatable).")] = None,
) -> None:
    """Map a CSV job log onto the trace format."""
    def go() -> None:
        trace_format(str(out))
        result = import_csv(src, arrival_col=arrival_col, type_col=type_col,
                            time_format=time_format, duration_col=duration_col,
                            duration_unit=duration_unit, end_col=end_col, id_col=id_col,
                            node_col=node_col, gpu_col=gpu_col, filters=filter or (),
                            type_map=parse_mapping(type_map or (), "type-map"))
        _write(lambda: write_rows(result.rows, out), out)
        typer.echo(f"wrote {out}: {result.summary()}")
    _run(go)


def _write(write: Callable[[], None], out: Path) -> None:
    try:
        write()
    except OSError as exc:
        raise InputError(f"cannot write: {exc.strerror or exc}", file=str(out)) from None


if __name__ == "__main__":
    trace_app()
