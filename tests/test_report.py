"""`gpusim report`: report.md, report.html and the PNG plots from a rec.json.

The recommendations here are built by hand with plausible numbers (one recommended, one
infeasible), so the tests judge the report, not a search outcome; one test also reports a real
`tune()` run on a small search. Nothing here depends on a random outcome: the synthetic curves
come from a fixed formula.
"""

from __future__ import annotations

import base64
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpusim import InputError

from advisor.recommendation import (Candidate, Estimate, Gate, Headroom, HeadroomRow, Inputs,
                                    ParetoPoint, PerTypeOption, Recommendation, Recommended,
                                    SearchInfo, StudyInfo, TraceInfo, Versions, WaitCurve,
                                    WhatIf, load_recommendation)

pytest.importorskip("matplotlib", reason="the report draws with matplotlib")

from advisor.report import FILES, figures, wait_curve_xy, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TYPES = ("faster_whisper", "ffmpeg", "paddleocr")
BASE = {"poll_interval": 2.0, "max_wait_time": 1800.0, "lock_timeout": 3600,
        "exponential_backoff": True, "max_poll_interval": 10.0, "use_event_driven": True,
        "fallback_timeout": 30.0}
PICK = {**BASE, "poll_interval": 0.4, "max_poll_interval": 3.0, "max_wait_time": 2400.0}
SPEC = {**BASE, "poll_interval": 0.5, "max_poll_interval": 5.0, "max_wait_time": 300.0,
        "lock_timeout": 600}
GATE_SPEC = (("success_rate", ">=", 0.95), ("wait_mean_reduction", ">=", 0.30),
             ("redis_cpu_increase", "<", 0.50), ("timeout_rate", "<", 0.05),
             ("lock_expired_per_acquisition", "<=", 0.001), ("double_occupancy_s", "<=", 0.0),
             ("redis_cpu_peak_1m", "<", 0.80))


def _gate(name: str, op: str, threshold: float, value: float, half: float) -> Gate:
    lo, hi = value - half, value + half
    cons = lo if op == ">=" else hi
    ok = cons >= threshold if op == ">=" else (cons < threshold if op == "<" else
                                               cons <= threshold)
    good = (lambda v: v - threshold) if op == ">=" else (lambda v: threshold - v)
    return Gate(name=name, op=op, threshold=threshold, value=value, ci95=(lo, hi),
                conservative=cons, margin=good(value), conservative_margin=good(cons), passed=ok)


def _gates(values: dict[str, tuple[float, float]]) -> list[Gate]:
    return [_gate(n, op, th, *values[n]) for n, op, th in GATE_SPEC]


GOOD = {"success_rate": (0.995, 0.002), "wait_mean_reduction": (0.41, 0.03),
        "redis_cpu_increase": (0.22, 0.04), "timeout_rate": (0.004, 0.002),
        "lock_expired_per_acquisition": (0.0, 0.0), "double_occupancy_s": (0.0, 0.0),
        "redis_cpu_peak_1m": (0.02, 0.001)}
BAD = {**GOOD, "success_rate": (0.855, 0.016), "timeout_rate": (0.145, 0.016),
       "wait_mean_reduction": (0.66, 0.02), "lock_expired_per_acquisition": (0.004, 0.001),
       "double_occupancy_s": (850.0, 120.0)}


def _curve(ttype: str, config: str, timeout_share: float, scale: float, cap: float,
           points: int = 21) -> WaitCurve:
    """Quantiles of a made-up wait distribution (exponential-shaped, below `cap`)."""
    share = 1.0 - timeout_share
    qs = [i / (points - 1) for i in range(points)]
    waits = [min(cap * 0.98, -scale * math.log(1 - q * 0.999)) for q in qs]
    return WaitCurve(task_type=ttype, config=config, tasks=1000, acquired_share=share,
                     timeout_share=timeout_share, censored_at_s=cap,
                     probabilities=[q * share for q in qs], wait_s=waits)


def _inputs() -> Inputs:
    return Inputs(
        trace=TraceInfo(path="traces/sample_2node_4gpu_day.csv", sha256="ab" * 32, tasks=5441,
                        span_s=86_000.0, task_types=list(TYPES)),
        baseline={"source": "examples/config.yml", "gpu_lock": BASE},
        cluster={"nodes": [{"name": "node0", "gpus": 4}, {"name": "node1", "gpus": 4}],
                 "gpu_policy": "pinned"},
        thresholds={"success_rate_min": 0.95, "wait_reduction_min": 0.3,
                    "redis_cpu_increase_max": 0.5, "timeout_rate_max": 0.05},
        space={"poll_interval": {"low": 0.05, "high": 5.0, "log": True}},
        search=SearchInfo(sampler="TPESampler(multivariate=True)", seed=0, trials=30,
                          replications=3, simulation_seed=0, check_seed=12345,
                          check_replications=10, check_candidates=5,
                          selection_rule="lowest upper 95% bound on mean lock wait"),
        versions=Versions(gpusim="0.1.0", optuna="5.0.0", numpy="2.4", python="3.11.2"))


def _common(feasible: bool) -> dict:
    head = Headroom(overall=HeadroomRow(tasks=5441, wait_mean_s=42.0, held_mean_s=30.0,
                                        free_mean_s=12.0, free_share=12 / 42,
                                        timeout_rate=0.002),
                    by_task_type={t: HeadroomRow(tasks=1000 + 100 * i, wait_mean_s=20.0 + 30 * i,
                                                 held_mean_s=15.0 + 25 * i, free_mean_s=5.0 + 5 * i,
                                                 free_share=(5.0 + 5 * i) / (20.0 + 30 * i),
                                                 timeout_rate=0.001 * i)
                                  for i, t in enumerate(TYPES)},
                    best_wait_reduction_within_timeout_gate=0.41 if feasible else 0.18,
                    least_timeout_rate_at_wait_gate=0.004 if feasible else 0.09)
    front = [ParetoPoint(trial=i, gpu_lock={**BASE, "poll_interval": 0.1 * (i + 1)},
                         wait_mean_s=20.0 + 4 * i, redis_cpu_utilization=0.03 - 0.002 * i,
                         feasible=feasible and i % 3 != 0) for i in range(8)]
    metrics = {"baseline": {"wait_mean_s": Estimate(mean=42.0, ci95=(40.0, 44.0)),
                            "redis_cpu_utilization": Estimate(mean=0.015, ci95=(0.014, 0.016)),
                            "timeout_rate": Estimate(mean=0.002, ci95=(0.001, 0.003))},
               "candidate": {"wait_mean_s": Estimate(mean=24.0, ci95=(22.5, 25.5)),
                             "redis_cpu_utilization": Estimate(mean=0.019, ci95=(0.018, 0.02)),
                             "timeout_rate": Estimate(mean=0.004, ci95=(0.002, 0.006))}}
    return dict(created_at="2026-11-28T08:00:00+00:00", inputs=_inputs(), headroom=head,
                pareto_front=front, metrics=metrics,
                importances={"wait_mean_s": {"poll_interval": 0.6, "max_wait_time": 0.3,
                                             "lock_timeout": 0.1},
                             "redis_cpu_utilization": {"poll_interval": 0.9,
                                                       "max_wait_time": 0.02,
                                                       "lock_timeout": 0.08}},
                study=StudyInfo(storage="journal:///tmp/x.journal", name="gpusim-tune-abc",
                                trials_by_state={"COMPLETE": 30}))


def recommended_rec() -> Recommendation:
    gates = _gates(GOOD)
    cand = Candidate(trial=7, gpu_lock=PICK, wait_mean_s=Estimate(mean=24.0, ci95=(22.5, 25.5)),
                     redis_cpu_utilization=Estimate(mean=0.019, ci95=(0.018, 0.02)),
                     gates=gates, passed=True)
    yaml = "gpu_lock:\n" + "".join(f"  {k}: {str(v).lower()}\n" for k, v in PICK.items())
    curves = [_curve(t, c, to, s, cap) for t in TYPES
              for c, to, s, cap in (("baseline", 0.002, 40.0, 1800.0),
                                    ("recommended", 0.004, 22.0, 2400.0))]
    return Recommendation(
        status="recommended", binding_gates=[], nearest=None, gates=gates, candidates=[cand],
        recommended=Recommended(gpu_lock=PICK, yaml=yaml, trial=7,
                                changed=["poll_interval", "max_poll_interval", "max_wait_time"]),
        explanation=["Recommended (trial 7): mean lock wait cut by 41.0% [38.0%, 44.0%].",
                     "Today 71.4% of the mean lock wait is queueing for a busy GPU."],
        wait_curves=curves, what_if=WhatIf(), **_common(True))


def infeasible_rec() -> Recommendation:
    gates = _gates(BAD)
    near = Candidate(trial=1, gpu_lock=SPEC, wait_mean_s=Estimate(mean=14.0, ci95=(13.0, 15.0)),
                     redis_cpu_utilization=Estimate(mean=0.011, ci95=(0.010, 0.012)),
                     gates=gates, passed=False)
    curves = [_curve(t, c, to, s, cap) for t in TYPES
              for c, to, s, cap in (("baseline", 0.0, 40.0, 1800.0),
                                    ("nearest", 0.145 if t == "faster_whisper" else 0.01,
                                     30.0, 300.0))]
    per_type = PerTypeOption(max_wait_time_by_type={"faster_whisper": 1800.0, "ffmpeg": 300.0,
                                                    "paddleocr": 120.0},
                             base_config=SPEC, gates=_gates(BAD), passed=False,
                             wait_reduction=0.5, timeout_rate=0.03,
                             timeout_rate_by_task_type={"faster_whisper": 0.001, "ffmpeg": 0.02,
                                                        "paddleocr": 0.04})
    return Recommendation(
        status="infeasible", recommended=None, nearest=near,
        binding_gates=[g.name for g in gates if not g.passed], gates=gates, candidates=[near],
        explanation=["No config among 30 searched passes every gate at the conservative end of "
                     "its 95% interval."],
        wait_curves=curves,
        what_if=WhatIf(ideal_lock={"gpu_lock": {**BASE, "poll_interval": 0.05,
                                                "exponential_backoff": False,
                                                "max_wait_time": 86400.0},
                                   "wait_reduction": {"mean": 0.22, "ci95": [0.2, 0.24]},
                                   "timeout_rate": 0.0},
                       gpus=[{"gpus_per_node": 5, "gpu_policy": "round_robin", "passed": False,
                              "wait_reduction": 0.5, "timeout_rate": 0.08},
                             {"gpus_per_node": 6, "gpu_policy": "round_robin", "passed": True,
                              "wait_reduction": 0.7, "timeout_rate": 0.01}],
                       gpus_needed=6, per_type_max_wait=per_type),
        **_common(False))


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, tuple[Recommendation, Path, list[Path]]]:
    """Each synthetic rec reported once (drawing takes seconds): status -> (rec, dir, paths)."""
    out = {}
    for rec in (recommended_rec(), infeasible_rec()):
        folder = tmp_path_factory.mktemp("report") / "out"  # not there yet: write_report makes it
        out[rec.status] = (rec, folder, write_report(rec, folder))
    return out


@pytest.fixture(params=["recommended", "infeasible"])
def report(request, reports) -> tuple[Recommendation, Path, list[Path]]:
    return reports[request.param]


def test_writes_every_file_and_md_mentions_every_gate(report):
    rec, folder, paths = report
    assert sorted(p.name for p in paths) == sorted(FILES)
    assert all(p.is_file() and p.stat().st_size > 0 and p.parent == folder for p in paths)
    assert sorted(os.listdir(folder)) == sorted(FILES), "temporary files left behind"
    md = (folder / "report.md").read_text()
    for g in rec.gates:
        assert re.search(rf"\| `{g.name}` \|.*\| {'PASS' if g.passed else 'FAIL'} \|", md), g.name
    for png in ("pareto.png", "waits.png", "headroom.png", "importances.png"):
        assert f"]({png})" in md
    for sentence in rec.explanation:
        assert sentence in md
    assert rec.inputs.trace.sha256 in md and rec.study.name in md
    for t in TYPES:  # headroom and wait curves per task type
        assert md.count(f"`{t}`") >= 2
    for png in ("pareto.png", "waits.png", "headroom.png", "importances.png"):
        assert (folder / png).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_recommended_report_has_the_yaml_block_to_paste(reports):
    rec, folder, _ = reports["recommended"]
    md = (folder / "report.md").read_text()
    assert "```yaml\n" + rec.recommended.yaml in md + "\n"
    assert "**Recommended** (trial 7)" in md
    assert "RECOMMENDED" in md.splitlines()[0]


def test_infeasible_report_says_why(reports):
    rec, folder, _ = reports["infeasible"]
    md = (folder / "report.md").read_text()
    assert "INFEASIBLE" in md.splitlines()[0] and "```yaml" not in md
    for g in rec.binding_gates:
        assert f"`{g}`" in md.split("## Gates")[0], "binding gates named before the gate table"
    assert "Fewest GPUs per node at which a searched config passes every gate: 6." in md
    assert "`faster_whisper` 1800 s" in md  # the per-type what-if
    assert "| `faster_whisper` | nearest (fails a gate) | 1000 | 85.5% | 14.5% | 300 s |" in md


def test_same_rec_same_bytes_through_rec_json(report, tmp_path):
    """Written again, after a round trip through rec.json, over the first report's files."""
    rec, folder, _ = report
    first = {name: (folder / name).read_bytes() for name in FILES}
    (tmp_path / "rec.json").write_text(rec.dumps())
    write_report(load_recommendation(str(tmp_path / "rec.json")), tmp_path)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == first[name], name
    write_report(rec, folder)  # over an existing report: replaced whole, nothing left over
    assert sorted(os.listdir(folder)) == sorted(FILES)
    assert all((folder / name).read_bytes() == first[name] for name in FILES)


def test_html_is_self_contained(report):
    rec, folder, _ = report
    page = (folder / "report.html").read_text()
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "http:" not in text and "https:" not in text and "href=" not in text
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "@import" not in page and "url(" not in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:  # each decodes to the PNG written beside it
        data = base64.b64decode(s.split(",", 1)[1])
        assert data.startswith(b"\x89PNG") and any(
            data == (folder / p).read_bytes() for p in FILES if p.endswith(".png"))
    assert "<table>" in page and "<style>" in page
    for g in rec.gates:
        assert f"<code>{g.name}</code>" in page


def test_unwritable_out_dir_is_an_input_error_and_writes_nothing(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(InputError) as err:
        write_report(recommended_rec(), blocker / "report")
    assert str(blocker / "report") in str(err.value)
    with pytest.raises(InputError) as err:
        write_report(recommended_rec(), blocker)
    assert str(blocker) in str(err.value)
    (tmp_path / "out" / "report.md").mkdir(parents=True)  # a folder where a file goes
    with pytest.raises(InputError, match="report.md"):
        write_report(recommended_rec(), tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["report.md"]
    assert sorted(os.listdir(tmp_path)) == ["file.txt", "out"]


def test_a_failed_write_leaves_no_half_report(tmp_path, monkeypatch):
    """Disk full while writing: no new folder, an old report untouched, no temporary files."""
    import advisor.report as report

    monkeypatch.setattr(report, "render_plots",
                        lambda rec: {name: b"\x89PNG" for name in report.PLOTS})

    def no_space(self, data):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(report.Path, "write_bytes", no_space)
    with pytest.raises(InputError, match="No space left") as err:
        write_report(recommended_rec(), tmp_path / "new")
    assert str(tmp_path / "new") in str(err.value) and not (tmp_path / "new").exists()
    old = tmp_path / "old"
    old.mkdir()
    (old / "report.md").write_text("the last report")
    with pytest.raises(InputError, match="No space left"):
        write_report(recommended_rec(), old)
    assert os.listdir(old) == ["report.md"] and (old / "report.md").read_text() == \
        "the last report"


def test_importing_the_report_does_not_import_matplotlib():
    done = subprocess.run([sys.executable, "-c", "import sys, advisor.report; "
                           "print('matplotlib' in sys.modules)"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.stdout.strip() == "False", done.stderr


def test_without_matplotlib_the_message_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ImportError, match="pip install 'matplotlib"):
        write_report(recommended_rec(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wait_curve_with_timeouts_ends_at_the_acquired_share():
    rec = infeasible_rec()
    c = next(c for c in rec.wait_curves
             if c.task_type == "faster_whisper" and c.config == "nearest")
    xs, ys = wait_curve_xy(c)
    assert c.timeout_share == pytest.approx(0.145)
    assert ys[-1] == pytest.approx(0.855) and max(ys) == pytest.approx(0.855)
    assert xs[-1] == c.censored_at_s
    assert all(y < 1 for x, y in zip(xs, ys) if x >= c.censored_at_s)
    assert xs == sorted(xs) and ys == sorted(ys)


def test_wait_plot_never_draws_give_ups_as_acquired():
    rec = infeasible_rec()
    fig = figures(rec)["waits.png"]
    shares = {(c.task_type, c.config): c for c in rec.wait_curves}
    checked = 0
    for ax in fig.axes:
        t = ax.get_title()
        if t not in TYPES:
            continue
        for line in ax.get_lines():
            label = line.get_label()
            config = "nearest" if label.startswith("nearest") else (
                "baseline" if label.startswith("today") else None)
            if config is None:  # the give-up marker: at the acquired share, at max_wait_time
                (x,), (y,) = line.get_xdata(), line.get_ydata()
                c = next(c for c in shares.values() if c.task_type == t and
                         c.censored_at_s == x and c.timeout_share > 0)
                assert y == pytest.approx(c.acquired_share)
                continue
            c = shares[(t, config)]
            ys = list(line.get_ydata())
            assert max(ys) == pytest.approx(c.acquired_share), (t, config)
            checked += 1
    assert checked == 2 * len(TYPES)
    texts = [a.get_text() for ax in fig.axes for a in ax.texts]
    assert any("14.5% gave up at 300 s" in s for s in texts), texts
    _assert_waits_plot_censored(rec)
    _assert_waits_plot_censored(recommended_rec())


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which(
        "google-chrome")


def _headless(exe: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", f"--user-data-dir={tmp / 'profile'}",
             "--virtual-time-budget=5000"]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_html_renders_in_headless_chromium(reports, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium on PATH: the HTML rendering check needs a headless browser")
    _, folder, _ = reports["infeasible"]
    shutil.copy(folder / "report.html", tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    # a probe copy (the report itself has no script) that records each image's decoded width
    probe = page.replace("</body>", "<script>window.addEventListener('load', () => {for (const i "
                         "of document.images) i.setAttribute('data-w', i.naturalWidth);});"
                         "</script></body>")
    (tmp_path / "probe.html").write_text(probe)
    done = _headless(exe, tmp_path, "--dump-dom", (tmp_path / "probe.html").as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    widths = [int(w) for w in re.findall(r'data-w="(\d+)"', dom)]
    assert len(widths) == 4 and all(w > 100 for w in widths), widths
    assert "<th>gate</th>" in dom and dom.count("<tr>") > 10
    assert "<code>timeout_rate</code>" in dom

    shot = tmp_path / "shot.png"
    done = _headless(exe, tmp_path, f"--screenshot={shot}", "--window-size=1200,2400",
                     (tmp_path / "report.html").as_uri())
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    from PIL import Image  # matplotlib depends on pillow

    img = Image.open(shot).convert("RGB")
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50, "the screenshot is blank"


def test_cli_report_writes_the_report_and_refuses_a_bad_folder(reports, tmp_path):
    from typer.testing import CliRunner

    from gpusim.cli.app import app

    rec, folder, _ = reports["infeasible"]
    (tmp_path / "rec.json").write_text(rec.dumps())
    res = CliRunner().invoke(app, ["report", str(tmp_path / "rec.json"), "--out",
                                   str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert all((tmp_path / "r" / name).read_bytes() == (folder / name).read_bytes()
               for name in FILES)
    (tmp_path / "file").write_text("x")
    res = CliRunner().invoke(app, ["report", str(tmp_path / "rec.json"), "--out",
                                   str(tmp_path / "file" / "r")])
    assert res.exit_code == 2 and str(tmp_path / "file" / "r") in res.output, res.output


def _assert_waits_plot_censored(rec: Recommendation) -> None:
    """Every drawn wait curve tops out at its acquired share (never 1 at censored_at_s)."""
    fig = figures(rec)["waits.png"]
    for ax in fig.axes:
        curves = {c.config: c for c in rec.wait_curves if c.task_type == ax.get_title()}
        for line in ax.get_lines():
            config = next((k for k in curves if line.get_label().startswith(
                {"baseline": "today", "recommended": "recommended",
                 "nearest": "nearest"}[k])), None)
            c = curves.get(config) if config else None
            if c is not None:
                assert max(line.get_ydata()) == pytest.approx(c.acquired_share)
                assert line.get_xdata()[-1] == pytest.approx(c.censored_at_s)


@pytest.mark.slow
def test_report_of_a_real_tune(tmp_path):
    """A small real search (the one-GPU sample: its spec-like configs time out 13-16% of the
    tasks): the report is written, deterministic through rec.json, and censors the waits."""
    tune_mod = pytest.importorskip("advisor.tune")
    from gpusim import load_lock_settings, load_trace

    rec = tune_mod.tune(load_trace(ROOT / "traces/sample_1gpu_day.jsonl"),
                        load_lock_settings(ROOT / "examples/config.yml"),
                        options=tune_mod.TuneOptions(trials=4, replications=2,
                                                     check_replications=2, check_candidates=1,
                                                     per_type_trials=0,
                                                     journal=tmp_path / "t.journal"))
    (tmp_path / "rec.json").write_text(rec.dumps())
    write_report(load_recommendation(str(tmp_path / "rec.json")), tmp_path / "a")
    write_report(rec, tmp_path / "b")
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    md = (tmp_path / "a" / "report.md").read_text()
    assert rec.gates and all(f"`{g.name}`" in md for g in rec.gates)
    assert ("```yaml" in md) == (rec.status == "recommended")
    for c in rec.wait_curves:
        assert wait_curve_xy(c)[1][-1] == pytest.approx(c.acquired_share)
    _assert_waits_plot_censored(rec)
