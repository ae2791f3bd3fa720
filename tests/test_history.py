"""`gpusim history` and `gpusim rollback plan`: the append-only config history
(GPU_LOCK_CONFIG_004), its tamper detection, and the plan back to the last stable config.

Nothing here is random: every entry's time is given (--at), so the files are byte-exact.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpusim import config_digest, load_lock_settings, parse_lock_settings
from gpusim.cli.app import app

from advisor.rollout.history import (GENESIS, NewEntry, append_entry, parse_history,
                                     read_history)
from advisor.rollout.rollback import NoStableConfig, env_lines, gpu_lock_yaml, plan_rollback

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, Path]:
    tmp_path = tmp_path_factory.mktemp("configs")
    paths = {}
    for name, body in (("prod", (ROOT / "examples/config.yml").read_text()),
                       ("spec", (ROOT / "examples/optimized.yml").read_text()),
                       ("odd", "gpu_lock:\n  poll_interval: 0.123456789\n"
                               "  max_poll_interval: 7.25\n  max_wait_time: 450.5\n")):
        paths[name] = tmp_path / f"{name}.yml"
        paths[name].write_text(body)
    return paths


def add(history: Path, config: Path, why: str, *extra: str) -> object:
    return runner.invoke(app, ["history", "add", str(config), "--history", str(history),
                               "--why", why, "--who", "ops", *extra])


def three_entries(tmp_path: Path, configs: dict[str, Path]) -> Path:
    h = tmp_path / "history.jsonl"
    for cfg, why, at, extra in ((configs["prod"], "production", "2026-11-01T10:00:00Z",
                                 ["--stable"]),
                                (configs["spec"], "the spec's candidate", "2026-11-02T10:00:00",
                                 []),
                                (configs["odd"], "tuned", "2026-11-03T10:00:00+08:00", [])):
        res = add(h, cfg, why, "--at", at, *extra)
        assert res.exit_code == 0, res.output
    return h


def test_entries_chain_and_record_who_why_when_and_the_config(tmp_path, configs):
    h = three_entries(tmp_path, configs)
    entries = read_history(h)
    assert [e.seq for e in entries] == [1, 2, 3]
    first, second, third = (e.doc for e in entries)
    assert first["prev_sha256"] == GENESIS
    assert second["prev_sha256"] == entries[0].line_sha256
    assert third["prev_sha256"] == entries[1].line_sha256
    # times are normalised to UTC with a Z; a naive time is UTC
    assert [d["at"] for d in (first, second, third)] == [
        "2026-11-01T10:00:00Z", "2026-11-02T10:00:00Z", "2026-11-03T02:00:00Z"]
    assert first["who"] == "ops" and first["why"] == "production" and first["stable"] is True
    assert second["stable"] is False
    prod = load_lock_settings(configs["prod"], environ={})
    assert first["config"]["gpu_lock"] == prod.gpu_lock.model_dump()
    assert first["config_digest"] == config_digest(prod)
    assert first["config"]["source"] == str(configs["prod"])


def test_same_inputs_same_bytes(tmp_path, configs):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = three_entries(tmp_path / "a", configs)
    b = three_entries(tmp_path / "b", configs)
    assert a.read_bytes() == b.read_bytes()


def test_environment_overrides_are_recorded_in_the_values(tmp_path, configs):
    h = tmp_path / "h.jsonl"
    entry = append_entry(h, NewEntry(str(configs["prod"]), "env", "ops", at="2026-01-01"),
                         environ={"GPU_LOCK_POLL_INTERVAL": "1.0", "USER": "x"})
    assert entry.doc["config"]["gpu_lock"]["poll_interval"] == 1.0
    assert entry.doc["config"]["env_overrides"] == {"GPU_LOCK_POLL_INTERVAL": "1.0"}


def test_who_defaults_to_user(tmp_path, configs):
    h = tmp_path / "h.jsonl"
    e = append_entry(h, NewEntry(str(configs["prod"]), "x", at="2026-01-01"),
                     environ={"USER": "alice"})
    e2 = append_entry(h, NewEntry(str(configs["prod"]), "x", at="2026-01-01"), environ={})
    assert (e.doc["who"], e2.doc["who"]) == ("alice", "unknown")


@pytest.fixture(scope="module")
def intact(tmp_path_factory, configs) -> Path:
    return three_entries(tmp_path_factory.mktemp("intact"), configs)


def _rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def _tamper_cases(h: Path) -> dict[str, tuple[list[bytes], int]]:
    lines = h.read_bytes().splitlines(keepends=True)
    edited = json.loads(lines[1])
    edited["why"] = "nobody changed anything"
    resealed = dict(edited)  # an editor who also recomputes the line's own hash
    from advisor.rollout.history import canonical, sha256_hex
    body = {k: v for k, v in resealed.items() if k != "sha256"}
    resealed["sha256"] = sha256_hex(canonical(body).encode())
    return {
        "edited middle line": ([lines[0], (json.dumps(edited) + "\n").encode(), lines[2]], 2),
        "edited and resealed": ([lines[0], (canonical(resealed) + "\n").encode(), lines[2]], 3),
        "removed middle line": ([lines[0], lines[2]], 2),
        "removed first line": ([lines[1], lines[2]], 1),
        "cut last line": ([lines[0], lines[1], lines[2][:-40]], 3),
        "last newline lost": ([lines[0], lines[1], lines[2][:-1]], 3),
        "swapped lines": ([lines[1], lines[0], lines[2]], 1),
        "edited last line": ([lines[0], lines[1], lines[2].replace(b'"tuned"', b'"tuneD"')], 3),
    }


@pytest.mark.parametrize("case", ["edited middle line", "edited and resealed",
                                  "removed middle line", "removed first line", "cut last line",
                                  "last newline lost", "swapped lines", "edited last line"])
def test_tampering_is_detected_naming_the_line_and_appending_is_refused(tmp_path, configs,
                                                                        intact, case):
    h = tmp_path / "history.jsonl"
    h.write_bytes(intact.read_bytes())
    lines, bad_line = _tamper_cases(h)[case]
    _rewrite(h, lines)
    before = h.read_bytes()
    res = runner.invoke(app, ["history", "list", "--history", str(h)])
    assert res.exit_code == 2, res.output
    assert f"{h}, line {bad_line}" in res.output, res.output
    res = add(h, configs["prod"], "after tampering", "--at", "2026-11-04")
    assert res.exit_code == 2 and f"line {bad_line}" in res.output
    assert h.read_bytes() == before           # nothing appended to a corrupt history
    res = runner.invoke(app, ["rollback", "plan", "--history", str(h)])
    assert res.exit_code == 2


def test_list_table_and_json(tmp_path, configs):
    h = three_entries(tmp_path, configs)
    res = runner.invoke(app, ["history", "list", "--history", str(h)])
    assert res.exit_code == 0, res.output
    assert "3 entries, hash chain intact" in res.output and "the spec's candidate" in res.output
    res = runner.invoke(app, ["history", "list", "--history", str(h), "--json"])
    doc = json.loads(res.output)
    assert [e["seq"] for e in doc["entries"]] == [1, 2, 3]
    assert doc["head_sha256"] == read_history(h)[-1].line_sha256


def test_plan_goes_back_to_the_last_stable_config(tmp_path, configs):
    h = three_entries(tmp_path, configs)
    out = tmp_path / "plan.json"
    res = runner.invoke(app, ["rollback", "plan", "--history", str(h), "--json", str(out)])
    assert res.exit_code == 0, res.output
    plan = json.loads(out.read_text())
    assert plan["target"]["seq"] == 1 and plan["current"]["seq"] == 3
    prod = load_lock_settings(configs["prod"], environ={})
    # the block and the overrides restore exactly the stable values
    pasted = parse_lock_settings(__import__("yaml").safe_load(plan["yaml"]), environ={})
    assert config_digest(pasted) == config_digest(prod)
    env = dict(line.removeprefix("export ").split("=", 1) for line in plan["env"])
    from_env = parse_lock_settings({}, environ=env)
    assert config_digest(from_env) == config_digest(prod)
    assert plan["changed"]["poll_interval"] == [0.123456789, 2.0]
    checks = " ".join(c["check"] for c in plan["checks"])
    for needle in ("timeout rate", "Redis CPU", "lock acquisition failure"):
        assert needle in checks
    assert all(c["within_s"] == 300 for c in plan["checks"])
    assert "gpu_lock:" in res.output and "export GPU_LOCK_POLL_INTERVAL=2" in res.output


def test_odd_values_round_trip_through_yaml_and_env(configs):
    cfg = load_lock_settings(configs["odd"], environ={}).gpu_lock
    import yaml
    assert config_digest(parse_lock_settings(yaml.safe_load(gpu_lock_yaml(cfg)),
                                             environ={})) == config_digest(cfg)
    env = dict(line.removeprefix("export ").split("=", 1) for line in env_lines(cfg))
    assert config_digest(parse_lock_settings({}, environ=env)) == config_digest(cfg)


def test_no_stable_config_exits_1(tmp_path, configs):
    h = tmp_path / "h.jsonl"
    assert add(h, configs["prod"], "a", "--at", "2026-01-01").exit_code == 0
    assert add(h, configs["spec"], "b", "--at", "2026-01-02").exit_code == 0
    res = runner.invoke(app, ["rollback", "plan", "--history", str(h)])
    assert res.exit_code == 1 and "no stable config" in res.output
    # a stable entry holding the current config is no rollback target either
    assert add(h, configs["spec"], "c", "--at", "2026-01-03", "--stable").exit_code == 0
    assert add(h, configs["spec"], "d", "--at", "2026-01-04").exit_code == 0
    with pytest.raises(NoStableConfig, match="#3"):
        plan_rollback(read_history(h), str(h))


def test_bad_inputs_exit_2_and_leave_no_history(tmp_path, configs):
    h = tmp_path / "h.jsonl"
    bad = tmp_path / "bad.yml"
    bad.write_text("gpu_lock:\n  poll_interval: -1\n")
    for args in ([str(bad), "--why", "x"], [str(configs["prod"]), "--why", "   "],
                 [str(configs["prod"]), "--why", "x", "--at", "yesterday"],
                 [str(configs["prod"]), "--why", "x", "--rec", str(tmp_path / "none.json")]):
        res = runner.invoke(app, ["history", "add", *args, "--history", str(h)])
        assert res.exit_code == 2, (args, res.output)
    assert not h.exists() or h.read_bytes() == b""
    res = runner.invoke(app, ["history", "list", "--history", str(tmp_path / "missing.jsonl")])
    assert res.exit_code == 2 and "no such history file" in res.output


def test_concurrent_appends_keep_one_chain(tmp_path, configs):
    """Four threads appending at once, each through its own open file (as separate processes
    would): the exclusive file lock serialises read-verify-append, so the chain holds and every
    entry is there once. Without the lock, two appenders reading the same head would write the
    same seq and prev_sha256 and parse_history would refuse the file."""
    h = tmp_path / "h.jsonl"

    def worker(p: int) -> None:
        for i in range(8):
            append_entry(h, NewEntry(str(configs["prod"]), f"p{p}-{i}", "ops", at="2026-01-01"),
                         environ={})

    threads = [threading.Thread(target=worker, args=(p,)) for p in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    entries = parse_history(h.read_bytes(), str(h))
    assert len(entries) == 32
    assert sorted(e.doc["why"] for e in entries) == sorted(f"p{p}-{i}" for p in range(4)
                                                           for i in range(8))


@pytest.mark.parametrize("path", [["history", "add"], ["history", "list"], ["rollback", "plan"],
                                  ["rollback", "simulate"], ["impact"]], ids=" ".join)
def test_help_shows_every_default_and_the_exit_codes(monkeypatch, path):
    import typer
    monkeypatch.setenv("COLUMNS", "300")  # one table row per option
    res = runner.invoke(app, [*path, "--help"])
    assert res.exit_code == 0
    assert "Exit codes: 0 pass or done, 1 a judged failure, 2 bad input" in res.output
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    for param in cmd.params:
        if param.name == "help" or param.param_type_name != "option":
            continue
        rows = [line for line in res.output.splitlines()  # the option's row of the table
                if re.match(rf"│ [* ] +{param.opts[0]} ", line)]
        assert len(rows) == 1, (param.opts, res.output)
        assert "[default: " in rows[0] or "[required]" in rows[0], rows[0]


def test_the_rec_it_came_from_is_recorded(tmp_path, configs):
    from test_impact import write_rec  # the smallest valid rec.json, recommending optimized.yml
    rec = write_rec(tmp_path / "rec.json")
    h = tmp_path / "h.jsonl"
    res = add(h, configs["spec"], "the recommendation", "--rec", str(rec), "--at", "2026-01-01")
    assert res.exit_code == 0, res.output
    doc = read_history(h)[0].doc
    import hashlib
    assert doc["rec"] == {"path": str(rec), "status": "recommended",
                          "sha256": hashlib.sha256(rec.read_bytes()).hexdigest(),
                          "matches_recommended": True}
    res = add(h, configs["prod"], "not the recommendation", "--rec", str(rec))
    assert read_history(h)[1].doc["rec"]["matches_recommended"] is False
