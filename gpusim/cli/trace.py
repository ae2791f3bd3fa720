"""`gpusim trace ...`: make, import, record and check trace files (thin typer layer over synth,
the importers, the recorder and the check).

Bad input of any kind (options, spec file, CSV rows) prints the errors, one per line, to stderr
and exits with code 2. The output path is checked before any work, and the file is written
atomically before anything is printed, so a failed run leaves no file behind and a closed
stdout loses nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gpusim.cli.common import (EXIT_CODES_HELP, bad_input, check_outputs, check_seed_option,
                               out as stdout)
from gpusim.errors import InputError

# synth, the readers and the importer (numpy, pydantic) are imported by the commands that run
# them, not for `--help`.
if TYPE_CHECKING:
    from gpusim.traces.format import Trace
    from gpusim.traces.synth import SynthSpec

#: The units `--duration-unit` takes (gpusim.traces.csv_import.DURATION_UNITS; a test checks).
DURATION_UNIT_NAMES = ("s", "ms", "min")

trace_app = typer.Typer(help="Make, import, record and check GPU task traces (synthetic "
                             "workloads, CSV, YiVideo's logs, a watched Redis).",
                        epilog=EXIT_CODES_HELP, no_args_is_help=True)


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
        raise bad_input(exc) from None


def _say(text: str) -> None:
    """Plain text to stdout through the closed-pipe-safe console (no markup: paths may hold [])."""
    stdout().print(text, markup=False, highlight=False, soft_wrap=True)


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
    from pydantic import ValidationError

    from gpusim.traces.synth import SynthSpec, load_spec, spec_errors
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


# The options of `trace synth` default to None so that only those given override --spec; their
# defaults (SynthSpec's) are stated with show_default, since a "[default: 24]" written into a
# help string is read by rich as a markup tag and vanishes.
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output trace (.jsonl or .csv, optionally .gz).")]


@trace_app.command("synth", epilog=EXIT_CODES_HELP)
def synth_cmd(
    out: OutOpt,
    hours: Annotated[float | None, typer.Option(help="Trace length in hours, at most 8784 (366 days).", show_default="24")] = None,
    gpus: Annotated[int | None, typer.Option(help="GPUs in total.", show_default="1")] = None,
    nodes: Annotated[int | None, typer.Option(help="Nodes; gpus must be a multiple.", show_default="1")] = None,
    load: Annotated[float | None, typer.Option(help="Offered load per GPU.", show_default="0.5")] = None,
    rate_per_hour: Annotated[float | None, typer.Option(help="Arrivals per hour (instead of --load).", show_default="from --load")] = None,
    arrivals: Annotated[ArrivalKind | None, typer.Option(help="Arrival process.", show_default="poisson")] = None,
    mix: Annotated[str | None, typer.Option(help="Type weights, e.g. paddleocr=0.6,ffmpeg=0.3,faster_whisper=0.1.", show_default="paddleocr=0.6,ffmpeg=0.3,faster_whisper=0.1")] = None,
    crash_prob: Annotated[float | None, typer.Option(help="Chance a holder's worker dies.", show_default="0")] = None,
    placement: Annotated[Placement | None, typer.Option(help="random: node/gpu per task; none: unset.", show_default="random")] = None,
    spec: Annotated[Path | None, typer.Option(help="YAML SynthSpec; options given here override it.", show_default="none")] = None,
    seed: Annotated[int, typer.Option(help="Seed, 0 to 2**64-1: same seed, same bytes.", callback=check_seed_option)] = 0,
) -> None:
    """Generate a seeded synthetic YiVideo-like workload (at most 10 million tasks)."""
    def go() -> None:
        from gpusim.traces.format import trace_format, write_trace
        from gpusim.traces.synth import synthesize
        trace_format(str(out))  # reject an unknown suffix before doing any work
        check_outputs(out)
        built = build_spec(spec, hours=hours, gpus=gpus, nodes=nodes, load=load,
                           rate_per_hour=rate_per_hour,
                           arrivals=arrivals.value if arrivals else None, mix=mix,
                           crash_prob=crash_prob,
                           placement=placement.value if placement else None)
        trace = synthesize(built, seed)
        write_trace(trace, out)  # written before anything is printed
        _say(summary(trace, built, seed, out))
    _run(go)


@trace_app.command("import", epilog=EXIT_CODES_HELP)
def import_cmd(
    src: Annotated[Path, typer.Argument(help="Source CSV (optionally .gz).")],
    out: OutOpt,
    arrival_col: Annotated[str, typer.Option(help="Column with the start (arrival) time.")],
    type_col: Annotated[str, typer.Option(help="Column with the task type.")],
    time_format: Annotated[str, typer.Option(help="iso | seconds | epoch | epoch_ms | a strptime pattern (naive = UTC).")] = "iso",
    duration_col: Annotated[str | None, typer.Option(help="Column with the GPU hold time (or give --end-col).", show_default="none")] = None,
    duration_unit: Annotated[str, typer.Option(help=f"Unit of --duration-col: {', '.join(DURATION_UNIT_NAMES)}.")] = "s",
    end_col: Annotated[str | None, typer.Option(help="Column with the end time (duration = end - start).", show_default="none")] = None,
    id_col: Annotated[str | None, typer.Option(help="Column with a unique task id.", show_default="<source stem>:<line>")] = None,
    node_col: Annotated[str | None, typer.Option(help="Column with the node name.", show_default="none: node unset")] = None,
    gpu_col: Annotated[str | None, typer.Option(help="Column with the GPU index.", show_default="none: gpu unset")] = None,
    filter: Annotated[list[str] | None, typer.Option("--filter", help="Keep rows with COL=VALUE / COL!=VALUE (repeatable).", show_default="none: keep every row")] = None,
    type_map: Annotated[list[str] | None, typer.Option(help="Rename a task type OLD=NEW (repeatable).", show_default="none")] = None,
) -> None:
    """Map a CSV job log onto the trace format."""
    def go() -> None:
        from gpusim.traces.csv_import import import_csv, parse_mapping
        from gpusim.traces.format import trace_format, write_rows
        trace_format(str(out))
        check_outputs(out)
        result = import_csv(src, arrival_col=arrival_col, type_col=type_col,
                            time_format=time_format, duration_col=duration_col,
                            duration_unit=duration_unit, end_col=end_col, id_col=id_col,
                            node_col=node_col, gpu_col=gpu_col, filters=filter or (),
                            type_map=parse_mapping(type_map or (), "type-map"))
        write_rows(result.rows, out)  # written before anything is printed
        _say(f"wrote {out}: {result.summary()}")
    _run(go)


@trace_app.command("import-yivideo-logs", epilog=EXIT_CODES_HELP)
def import_logs_cmd(
    logs: Annotated[list[str], typer.Argument(help="YiVideo log files (plain or .gz), each PATH or HOST=PATH; merged by time.")],
    out: OutOpt,
    host: Annotated[str | None, typer.Option(help="Host of the files given without HOST=.", show_default="the file name up to its first dot")] = None,
    time_scale: Annotated[float, typer.Option(help="Multiply every logged time by this (a replay run F times faster: F).")] = 1.0,
    config: Annotated[Path | None, typer.Option(help="The gpu_lock config the tasks ran under: its digest goes on each row whose start line logged its max_wait_time.", show_default="none: no config_digest")] = None,
) -> None:
    """Pair YiVideo's lock log lines into tasks with their observed waits, holds and outcomes.

    Lines that cannot be paired are counted and listed by reason (see traces/README.md).
    """
    def go() -> None:
        from gpusim.traces.format import trace_format, write_rows
        from gpusim.traces.yivideo_logs import import_yivideo_logs, parse_sources
        trace_format(str(out))
        check_outputs(out)
        settings = None
        if config is not None:
            from gpusim.config import load_lock_settings
            settings = load_lock_settings(config)
        result = import_yivideo_logs(parse_sources(logs, host), time_scale=time_scale,
                                     config=settings)
        from gpusim.traces.format import trace_from_rows
        trace_from_rows(result.rows, str(out))  # the rows make a valid trace
        write_rows(result.rows, out)  # written before anything is printed
        _say(f"wrote {out}: {result.summary()}")
        if not result.rows:
            from gpusim.exitcodes import ExitCode
            raise typer.Exit(int(ExitCode.INCONCLUSIVE))  # lock lines, but no whole task
    _run(go)


@trace_app.command("record", epilog=EXIT_CODES_HELP)
def record_cmd(
    out: OutOpt,
    redis_url: Annotated[str, typer.Option(help="The Redis YiVideo's lock runs on, e.g. redis://host:6379/2.")],
    seconds: Annotated[float | None, typer.Option(help="Stop after this many seconds.", show_default="until Ctrl-C")] = None,
    keys: Annotated[str, typer.Option(help="Glob of the lock keys to watch.")] = "gpu_lock:*",
    config: Annotated[Path | None, typer.Option(help="The gpu_lock config the tasks ran under (its max_wait_time tells when a waiting task gave up; its digest goes in each row).", show_default="YiVideo's defaults, no digest")] = None,
    time_scale: Annotated[float, typer.Option(help="Multiply every recorded time by this (watching a replay run F times faster: F).")] = 1.0,
) -> None:
    """Watch a live Redis (MONITOR) and rebuild the lock tasks from its commands.

    MONITOR costs the watched Redis CPU on every command it runs (measured: README). Ctrl-C
    stops the recording and writes what was recorded so far (exit 130); so does losing the
    Redis mid-record (exit 1). No task recorded: exit 3.
    """
    def go() -> None:
        from gpusim.traces.format import trace_format
        trace_format(str(out))
        if seconds is not None and not (0 < seconds <= 366 * 86400):
            raise InputError("must be > 0 and at most 366 days", field="seconds")
        if not (0 < time_scale < float("inf")):
            raise InputError("must be a positive number", field="time_scale")
        check_outputs(out)
        _record(out, redis_url, seconds, keys, config, time_scale)
    _run(go)


def _record(out: Path, redis_url: str, seconds: float | None, keys: str, config: Path | None,
            time_scale: float) -> None:
    from gpusim.cli.common import fail, set_interrupt_note
    from gpusim.config import GpuLockConfig, config_digest, load_lock_settings
    from gpusim.exitcodes import ExitCode
    from gpusim.real.monitor import MonitorLost, MonitorUnavailable, server_time, watch
    from gpusim.traces.format import write_rows
    from gpusim.traces.recorder import Reconstructor
    lock = load_lock_settings(config).gpu_lock if config is not None else GpuLockConfig()
    rec = Reconstructor(keys, max_wait_s=lock.max_wait_time / time_scale,
                        config_digest=config_digest(lock) if config is not None else None)
    interrupted, lost = False, None
    try:
        watch(redis_url, rec.feed_text, seconds=seconds)
        end_t = server_time(redis_url, rec.last_t)  # the record's end on the server's clock
    except KeyboardInterrupt:
        interrupted = True
        end_t = server_time(redis_url, rec.last_t)
    except MonitorLost as exc:  # Redis went away: keep what was recorded, and say so
        lost, end_t = str(exc), rec.last_t
    except MonitorUnavailable as exc:
        raise fail(str(exc), ExitCode.BAD_INPUT) from None
    rec.finish(end_t)
    rows = rec.rows(time_scale)
    write_rows(rows, out)  # written before anything is printed
    if interrupted:
        set_interrupt_note(f"wrote {out}: {len(rows)} tasks recorded so far")
        raise typer.Exit(int(ExitCode.INTERRUPTED))
    if lost is not None:
        raise fail(f"{lost}; wrote {out}: {len(rows)} tasks recorded until then",
                   ExitCode.FAIL)
    _say(f"wrote {out}: {rec.summary()}")
    if config is None:
        _say(f"  (a waiting task gave up after {lock.max_wait_time:g} s, YiVideo's default "
             "max_wait_time: give --config for yours)")
    if not rows:
        raise typer.Exit(int(ExitCode.INCONCLUSIVE))


@trace_app.command("check", epilog=EXIT_CODES_HELP)
def check_cmd(
    trace: Annotated[Path, typer.Argument(help="Trace file (.jsonl or .csv, optionally .gz).")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the summary as JSON here.", show_default="none")] = None,
) -> None:
    """Summarise a trace before trusting it.

    Tasks, span, types, offered load per GPU, observed waits and timeouts, unknown holds and
    gaps in the record (traces/README.md, "Importers").
    """
    def go() -> None:
        import json

        from gpusim.output import atomic_write_text
        from gpusim.traces.check import check_trace, render
        from gpusim.traces.format import load_trace
        if json_out is not None:
            check_outputs(json_out)
        summary = check_trace(load_trace(trace))
        if json_out is not None:
            atomic_write_text(json_out, json.dumps(summary, indent=2, sort_keys=True) + "\n")
        _say(render(summary))
    _run(go)


if __name__ == "__main__":
    from gpusim.cli.common import main

    main(trace_app)
