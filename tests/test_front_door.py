"""The front door holds for every command: each output, input and option error is one line on
stderr with exit code 2 and leaves nothing on disk; a closed stdout loses no result; values the
model cannot hold are refused with their bound; every option shows its default and every
command its exit codes.

Most cases call the real entry point `gpusim.cli.common.main` in-process (the code path of the
console script, minus the interpreter start); the closed-pipe cases run `python -m gpusim`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from gpusim.cli.app import app
from gpusim.cli.common import main
from gpusim.traces.format import load_trace

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT / "traces" / "sample_1gpu_day.jsonl"   # 719 tasks: a run takes well under a second
CONFIG = ROOT / "examples" / "config.yml"


def gpusim(capsys, *args: object) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `gpusim ARGS` through the console script's entry point."""
    with pytest.raises(SystemExit) as info:
        main(app, [str(a) for a in args])
    cap = capsys.readouterr()
    return info.value.code, cap.out, cap.err


def one_error_line(stderr: str, *needles: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def no_leftovers(folder: Path, *allowed: str) -> None:
    """Nothing but `allowed` in folder: no output file, no temp file."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(allowed)


@pytest.fixture(scope="module")
def source_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("src") / "log.csv"
    path.write_text("start,kind,hold\n0,ocr,1.5\n4,ocr,2\n9,asr,30\n")
    return path


def command(name: str, out: Path, source_csv: Path) -> list[object]:
    """Each command that writes a file, with `-o` (one meaning everywhere) set to `out`."""
    return {
        "simulate": ["simulate", TRACE, "-c", CONFIG, "-o", out],
        "simulate-records": ["simulate", TRACE, "-c", CONFIG, "--records", out],
        "compare": ["compare", TRACE, "--baseline", CONFIG, "--candidate", CONFIG, "-o", out],
        "synth": ["trace", "synth", "-o", out, "--hours", "1"],
        "import": ["trace", "import", source_csv, "-o", out, "--arrival-col", "start",
                   "--type-col", "kind", "--duration-col", "hold", "--time-format", "seconds"],
    }[name]


COMMANDS = ["simulate", "simulate-records", "compare", "synth", "import"]


# --- a closed stdout loses nothing ---------------------------------------------------------------

def test_simulate_piped_into_head_keeps_the_json_and_exits_0(tmp_path):
    out = tmp_path / "r.json"
    script = (f"'{sys.executable}' -m gpusim simulate '{TRACE}' -c '{CONFIG}' --json '{out}' "
              f"2>'{tmp_path / 'err.txt'}' | head -1; exit ${{PIPESTATUS[0]}}")
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, (tmp_path / "err.txt").read_text()
    assert len(proc.stdout.splitlines()) == 1
    assert (tmp_path / "err.txt").read_text() == ""
    assert json.loads(out.read_text())["schema"] == "gpusim.result/1"
    no_leftovers(tmp_path, "r.json", "err.txt")


@pytest.mark.parametrize("name", ["simulate", "synth"])
def test_stdout_closed_before_the_first_write(tmp_path, source_csv, name):
    """Deterministic variant of `| head`: the reader is gone before anything is printed, so
    every print meets a broken pipe."""
    out = tmp_path / "x.jsonl"
    read_end, write_end = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "gpusim",
                             *map(str, command(name, out, source_csv))],
                            stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    os.close(write_end)
    os.close(read_end)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0 and stderr == "", stderr
    if name == "synth":
        assert len(load_trace(out)) > 0
    else:
        assert json.loads(out.read_text())["metrics"]["tasks"] == 719
    no_leftovers(tmp_path, "x.jsonl")


@pytest.mark.parametrize("args", [["--help"], ["canary", "--help"], ["history", "--help"],
                                  ["trace", "check", "--help"]])
def test_help_into_a_closed_pipe_exits_0_quietly(args):
    """`gpusim --help | head -1`: click's own answer to a broken pipe is exit 1; ours is 0."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the help is written
    proc = subprocess.run([sys.executable, "-m", "gpusim", *args], stdout=write_end,
                          stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=120)
    os.close(write_end)
    assert (proc.returncode, proc.stderr) == (0, "")


# --- output paths that cannot be written: refused before the run --------------------------------

@pytest.fixture
def read_only_dir(tmp_path) -> Path:
    """A real read-only folder: a read-only tmpfs mounted in tmp_path (we run as root, and
    chmod 0555 does not stop root). Skipped where the sandbox may not mount."""
    folder = tmp_path / "ro"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(folder)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {done.stderr!r}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("name", COMMANDS)
def test_read_only_folder(capsys, read_only_dir, source_csv, name):
    code, _, err = gpusim(capsys, *command(name, read_only_dir / "x.jsonl", source_csv))
    assert code == 2
    one_error_line(err, str(read_only_dir / "x.jsonl"), "Read-only file system")
    no_leftovers(read_only_dir)


@pytest.mark.parametrize("name", COMMANDS)
def test_directory_as_output(capsys, tmp_path, source_csv, name):
    (tmp_path / "x.jsonl").mkdir()
    code, _, err = gpusim(capsys, *command(name, tmp_path / "x.jsonl", source_csv))
    assert code == 2
    one_error_line(err, str(tmp_path / "x.jsonl"), "is a directory")
    no_leftovers(tmp_path, "x.jsonl")
    no_leftovers(tmp_path / "x.jsonl")


@pytest.mark.parametrize("target,reason", [("/proc/gpusim-x.jsonl", "No such file"),
                                           ("/sys/gpusim-x.jsonl", "Permission denied")])
@pytest.mark.parametrize("name", ["simulate", "synth", "import"])
def test_proc_and_sys_paths(capsys, source_csv, name, target, reason):
    code, _, err = gpusim(capsys, *command(name, Path(target), source_csv))
    assert code == 2
    one_error_line(err, target, "cannot write in folder")
    assert not os.path.exists(target)


@pytest.mark.parametrize("name", COMMANDS)
def test_missing_folder(capsys, tmp_path, source_csv, name):
    code, _, err = gpusim(capsys, *command(name, tmp_path / "no" / "x.jsonl", source_csv))
    assert code == 2
    one_error_line(err, "does not exist")
    no_leftovers(tmp_path)


def test_same_file_for_two_outputs(capsys, tmp_path):
    out = tmp_path / "r.json"
    code, _, err = gpusim(capsys, "simulate", TRACE, "-c", CONFIG, "-o", out, "--records", out)
    assert code == 2
    one_error_line(err, str(out), "two outputs")
    no_leftovers(tmp_path)


# --- input files ---------------------------------------------------------------------------------

def yaml_case(tmp_path: Path, which: str, text: str) -> tuple[list[object], Path]:
    path = tmp_path / f"{which}.yml"
    path.write_text(text)
    out = tmp_path / "r.json"
    args = {
        "config": ["simulate", TRACE, "-c", path, "-o", out],
        "cluster": ["simulate", TRACE, "-c", CONFIG, "-k", path, "-o", out],
        "thresholds": ["compare", TRACE, "--baseline", CONFIG, "--candidate", CONFIG,
                       "--thresholds", path, "-o", out],
        "spec": ["trace", "synth", "-o", tmp_path / "x.jsonl", "--spec", path],
    }[which]
    return args, path


@pytest.mark.parametrize("which,what", [("config", "empty config"),
                                        ("cluster", "empty cluster file"),
                                        ("thresholds", "empty thresholds file"),
                                        ("spec", "empty synth spec file")])
@pytest.mark.parametrize("text", ["", "# nothing but a comment\n\n"])
def test_empty_yaml_file(capsys, tmp_path, which, what, text):
    args, path = yaml_case(tmp_path, which, text)
    code, _, err = gpusim(capsys, *args)
    assert code == 2
    one_error_line(err, f"{path}: {what}")
    no_leftovers(tmp_path, path.name)


@pytest.mark.parametrize("which,text,line,field", [
    ("config", "gpu_lock:\n  poll_interval: 1\n  max_wait_time: 60\n  poll_interval: 2\n", 4,
     "gpu_lock.poll_interval"),
    ("config", "poll_interval: 1\npoll_interval: 1\n", 2, "poll_interval"),
    ("cluster", "nodes: 2\ngpus_per_node: 1\nnodes: 3\n", 3, "nodes"),
    ("cluster", "redis:\n  cpu_us: {GET: 1, GET: 2}\n", 2, "redis.cpu_us.GET"),
    ("thresholds", "success_rate_min: 0.9\nsuccess_rate_min: 0.8\n", 2, "success_rate_min"),
    ("spec", "hours: 1\nhours: 2\n", 2, "hours"),
])
def test_duplicate_yaml_key(capsys, tmp_path, which, text, line, field):
    args, path = yaml_case(tmp_path, which, text)
    code, _, err = gpusim(capsys, *args)
    assert code == 2
    one_error_line(err, f"{path}, line {line}, field '{field}'", "given twice")
    no_leftovers(tmp_path, path.name)


@pytest.mark.parametrize("field", ["arrival_s", "duration_s"])
@pytest.mark.parametrize("value", ["1e12", "1e300"])
def test_huge_time_in_a_trace(capsys, tmp_path, field, value):
    trace = tmp_path / "t.jsonl"
    row = {"task_type": "ocr", "arrival_s": 5, "duration_s": 1}
    trace.write_text(json.dumps({"task_type": "ocr", "arrival_s": 0, "duration_s": 1}) + "\n"
                     + json.dumps(row).replace(f'"{field}": {row[field]}',
                                               f'"{field}": {value}') + "\n")
    code, _, err = gpusim(capsys, "simulate", trace, "-c", CONFIG, "-o", tmp_path / "r.json")
    assert code == 2
    one_error_line(err, f"{trace}, line 2, field '{field}'", "at most 31622400 s (366 days")
    no_leftovers(tmp_path, "t.jsonl")


def test_timestamps_spanning_more_than_366_days(capsys, tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"task_type": "a", "timestamp": "2020-01-01T00:00:00Z", "duration_s": 1}\n'
                     '{"task_type": "a", "timestamp": "2022-01-01T00:00:00Z", "duration_s": 1}\n')
    code, _, err = gpusim(capsys, "simulate", trace, "-c", CONFIG)
    assert code == 2
    one_error_line(err, f"{trace}, line 2, field 'timestamp'", "at most 366 days")


def test_huge_time_in_an_imported_csv(capsys, tmp_path):
    src = tmp_path / "log.csv"
    src.write_text("start,kind,hold\n0,ocr,1\n1e300,ocr,2\n")
    code, _, err = gpusim(capsys, "trace", "import", src, "-o", tmp_path / "x.jsonl",
                          "--arrival-col", "start", "--type-col", "kind",
                          "--duration-col", "hold", "--time-format", "seconds")
    assert code == 2
    one_error_line(err, f"{src}, line 3, field 'arrival_s'", "366 days")
    no_leftovers(tmp_path, "log.csv")


@pytest.mark.parametrize("which,text,field,bound", [
    ("config", "gpu_lock:\n  poll_interval: 0.0001\n", "gpu_lock.poll_interval", "0.001"),
    ("config", "gpu_lock:\n  poll_interval: 0.001\n  max_poll_interval: 0.0005\n",
     "gpu_lock.max_poll_interval", "0.001"),
    ("config", "gpu_lock:\n  max_wait_time: 1.0e+300\n", "gpu_lock.max_wait_time", "86400"),
    ("config", "gpu_lock:\n  lock_timeout: 1000000000000\n", "gpu_lock.lock_timeout",
     "31622400"),
    ("config", "gpu_lock:\n  fallback_timeout: 1.0e+12\n", "gpu_lock.fallback_timeout",
     "86400"),
    ("config", "gpu_lock_monitor:\n  monitor_interval: 1.0e+12\n",
     "gpu_lock_monitor.monitor_interval", "86400"),
    ("config", "gpu_lock_monitor:\n  monitor_interval: 0.001\n",
     "gpu_lock_monitor.monitor_interval", "greater than or equal to 1"),
    ("config", "gpu_lock_monitor:\n  timeout_levels: {soft_timeout: 1.0e+300}\n",
     "gpu_lock_monitor.timeout_levels.soft_timeout", "31622400"),
    ("cluster", "nodes: 1000000000000\n", "nodes", "1024"),
    ("cluster", "gpus_per_node: 100000\n", "gpus_per_node", "1024"),
    ("cluster", "redis:\n  rtt_s: 1.0e+300\n", "redis.rtt_s", "60"),
])
def test_config_and_cluster_bounds(capsys, tmp_path, which, text, field, bound):
    args, path = yaml_case(tmp_path, which, text)
    code, _, err = gpusim(capsys, *args)
    assert code == 2
    one_error_line(err, f"{path}, line ", f"field '{field}'", bound)


@pytest.mark.parametrize("args,needle", [
    (["--hours", "1e300"], "8784"),
    (["--hours", "9000"], "8784"),
    (["--rate-per-hour", "1e300"], "at most 10,000,000"),
    (["--gpus", "1000", "--load", "0.9", "--hours", "8000"], "at most 10,000,000"),
    (["--gpus", "10000000000"], "1048576"),
])
def test_synth_sizes_are_bounded(capsys, tmp_path, args, needle):
    code, _, err = gpusim(capsys, "trace", "synth", "-o", tmp_path / "x.jsonl", *args)
    assert code == 2
    one_error_line(err, needle)
    no_leftovers(tmp_path)


@pytest.mark.parametrize("seed", ["-1", str(2 ** 64)])
@pytest.mark.parametrize("name", ["simulate", "compare", "synth"])
def test_seed_out_of_range(capsys, tmp_path, source_csv, name, seed):
    code, _, err = gpusim(capsys, *command(name, tmp_path / "x.jsonl", source_csv),
                          "--seed", seed)
    assert code == 2
    one_error_line(err, "--seed", "0 to 2**64-1")
    no_leftovers(tmp_path)


@pytest.mark.parametrize("args", [["simulate"], ["simulate", TRACE], ["simulate", TRACE, "-c",
                                                                     CONFIG, "--bogus"],
                                  ["trace", "synth"], ["compare", TRACE, "-r", "0"]])
def test_usage_errors_are_one_line(capsys, args):
    code, _, err = gpusim(capsys, *args)
    assert code == 2
    one_error_line(err, "--help")


# --- help ----------------------------------------------------------------------------------------

MY_COMMANDS = [["simulate"], ["compare"], ["trace", "synth"], ["trace", "import"]]


def click_command(path: list[str]):
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


@pytest.mark.parametrize("path", MY_COMMANDS, ids=" ".join)
def test_every_option_shows_its_default_in_help(capsys, monkeypatch, path):
    monkeypatch.setenv("COLUMNS", "300")  # one table row per option
    code, out, _ = gpusim(capsys, *path, "--help")
    assert code == 0
    for param in click_command(path).params:
        if param.name == "help" or param.param_type_name != "option":
            continue
        rows = [line for line in out.splitlines() if f" {param.opts[0]} " in line]
        assert len(rows) == 1, (param.opts, out)
        assert "[default: " in rows[0] or "[required]" in rows[0], rows[0]
    if path == ["trace", "synth"]:  # the defaults a None option stands for are stated
        assert "[default: (24)]" in out and "[default: (poisson)]" in out


@pytest.mark.parametrize("path", MY_COMMANDS + [[]], ids=lambda p: " ".join(p) or "gpusim")
def test_exit_codes_in_every_help(capsys, monkeypatch, path):
    monkeypatch.setenv("COLUMNS", "300")
    code, out, _ = gpusim(capsys, *path, "--help")
    assert code == 0
    assert "Exit codes: 0 pass or done, 1 a judged failure, 2 bad input" in out


def test_short_o_is_the_output_file_everywhere():
    for path, long in ((["simulate"], "--json"), (["compare"], "--json"),
                       (["trace", "synth"], "--out"), (["trace", "import"], "--out")):
        owners = [p.opts for p in click_command(path).params if "-o" in p.opts]
        assert owners == [[long, "-o"]], (path, owners)
