"""advisor.storage and advisor.worker: a study shared by processes, robust to killed workers.

Workers are separate processes (tests/advisor_toy_worker.py, a toy two-objective search that
logs every evaluation it starts and finishes); each storage kind is exercised the same way:
journal file, SQLite, Redis (the session's private redis-server) and PostgreSQL (a private
server started here with initdb + pg_ctl when the binaries exist). Timing only ever decides how
long a test takes, never what it asserts: every wait has a generous timeout, and heartbeat_s /
grace_s are short (0.5 s / 2 s) so the file runs in well under a minute.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
import redis

from advisor.storage import StudyStorage, open_storage, redact
from advisor.worker import (FAIL_REASON, HEARTBEAT_ATTR, RETRY_OF, Evaluation, WorkerStats,
                            _enqueue_retry, _fail_running, _recover, run_worker)
from gpusim import InputError

ROOT = Path(__file__).resolve().parents[1]
TOY = Path(__file__).with_name("advisor_toy_worker.py")
PROC_TIMEOUT_S = 90  # a loaded 2-core machine; a healthy run takes a few seconds
HEARTBEAT_S, GRACE_S = 0.5, 2.0
TrialState = optuna.trial.TrialState

optuna.logging.set_verbosity(optuna.logging.WARNING)


# -- storages --------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_binaries() -> dict[str, str] | None:
    found = {}
    for name in ("initdb", "pg_ctl", "postgres"):
        path = shutil.which(name) or f"/usr/local/bin/{name}"
        if not os.access(path, os.X_OK):
            return None
        found[name] = path
    return found


def _as_unprivileged() -> tuple[list[str], int | None]:
    """A command prefix that drops root (postgres refuses to run as root), and its uid."""
    if os.geteuid() != 0:
        return [], None
    runuser = shutil.which("runuser")
    try:
        nobody = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        nobody = None
    if runuser is None or nobody is None:
        pytest.skip("running as root, and postgres refuses root: no `runuser` and user "
                    "`nobody` to start it as")
    return [runuser, "-u", "nobody", "--"], nobody


class _Postgres:
    def __init__(self, base: Path, port: int):
        self.base, self.port = base, port

    def new_database_url(self) -> str:
        import psycopg2

        name = f"t_{uuid.uuid4().hex[:12]}"
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres",
                                dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
        conn.close()
        # trust auth ignores the password: it is there to show it never leaks
        return f"postgresql+psycopg2://postgres:s3cret@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="module")
def postgres_server():
    """A private PostgreSQL on a free loopback port, in a temporary folder it owns."""
    bins = _pg_binaries()
    if bins is None:
        pytest.skip("PostgreSQL tests need initdb, pg_ctl and postgres on PATH or in "
                    "/usr/local/bin (Debian: apt-get install postgresql)")
    prefix, uid = _as_unprivileged()
    base = Path(tempfile.mkdtemp(prefix="gpusim-pg-"))  # /tmp: reachable by `nobody`
    if uid is not None:
        os.chown(base, uid, -1)
    data = base / "data"
    run = dict(cwd=base, capture_output=True, text=True, timeout=120)
    try:
        done = subprocess.run([*prefix, bins["initdb"], "-D", str(data), "--auth=trust",
                               "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"], **run)
        assert done.returncode == 0, f"initdb failed: {done.stderr[-2000:]}"
        port = _free_port()
        opts = (f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={base} "
                "-c fsync=off")
        done = subprocess.run([*prefix, bins["pg_ctl"], "-D", str(data), "-l",
                               str(base / "log"), "-w", "-t", "60", "-o", opts, "start"], **run)
        assert done.returncode == 0, f"pg_ctl start failed: {done.stdout}{done.stderr}"
        yield _Postgres(base, port)
    finally:
        _stop_postmaster(data / "postmaster.pid")
        shutil.rmtree(base, ignore_errors=True)


def _stop_postmaster(pid_file: Path) -> None:
    """SIGQUIT, PostgreSQL's immediate shutdown, and wait: pg_ctl -w polls once a second."""
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGQUIT)
    except (OSError, ValueError, IndexError):
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """False once the process is gone or a zombie (its parent, pg_ctl, is gone: init reaps)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


REDIS_DB = 7  # a database of the session's redis-server that no other test uses


@pytest.fixture(params=["journal", "sqlite", pytest.param("redis", marks=pytest.mark.redis),
                        "postgresql"])
def shared_url(request, tmp_path) -> str:
    """A fresh, empty storage URL of each kind that separate processes can share."""
    kind = request.param
    if kind == "journal":
        return str(tmp_path / "study.journal")
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    if kind == "redis":
        srv = request.getfixturevalue("redis_server")
        redis.Redis(host=srv.host, port=srv.port, db=REDIS_DB).flushdb()
        return f"redis://127.0.0.1:{srv.port}/{REDIS_DB}"
    return request.getfixturevalue("postgres_server").new_database_url()


def _open(url: str, tmp_path: Path, **kw) -> StudyStorage:
    return open_storage(url, tmp_path / "default.journal", heartbeat_s=HEARTBEAT_S,
                        grace_s=GRACE_S, **kw)


def _study(storage: StudyStorage, name: str = "s", seed: int = 0) -> optuna.Study:
    sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    return optuna.create_study(storage=storage.storage, study_name=name, sampler=sampler,
                               directions=["minimize", "minimize"], load_if_exists=True)


# -- open_storage and redact -----------------------------------------------------------------

def test_open_storage_parses_every_url_form(tmp_path, monkeypatch):
    """Each form opens the kind it names, and a study written through it reads back.

    Deterministic: no clock and no other process; the kind and file are checked explicitly."""
    monkeypatch.chdir(tmp_path)
    default = tmp_path / "beside-output.journal"
    cases = [(None, "journal", default, str(default)),
             (str(tmp_path / "a.journal"), "journal", tmp_path / "a.journal", None),
             (f"journal://{tmp_path / 'b.journal'}", "journal", tmp_path / "b.journal", None),
             ("file:c.journal", "journal", tmp_path / "c.journal", None),
             (f"sqlite:///{tmp_path / 'd.db'}", "sqlite", tmp_path / "d.db", None)]
    for url, kind, file, shown in cases:
        st = open_storage(url, default)
        assert (st.kind, st.url) == (kind, shown or url)
        assert file.is_file(), url
        _study(st, "round-trip").enqueue_trial({"x": 0.5})
        again = optuna.load_study(study_name="round-trip", storage=open_storage(url, default)
                                  .storage)
        assert len(again.trials) == 1, url


@pytest.mark.parametrize("url, says", [
    ("   ", "empty"),
    ("journal://", "no journal file path"),
    ("{tmp}/missing/j.journal", "does not exist"),
    ("{tmp}/a-file/j.journal", "does not exist"),  # the parent is a file
    ("{tmp}", "not a file"),
    ("{tmp}/not-a-journal.jsonl", "not an Optuna journal"),
    ("sqlite:///{tmp}/missing/x.db", "does not exist"),
    ("http://example.com/study", "unknown storage scheme"),
    ("postgresql://bob:hunter2@127.0.0.1:{closed}/db", "cannot open the database"),
    ("mssql+pymssql://bob:hunter2@127.0.0.1:{closed}/db", "no database driver"),
    ("redis://:hunter2@127.0.0.1:{closed}/0", "cannot reach the Redis"),
    ("redis://127.0.0.1:{closed}/notanumber", "must be a number"),  # redis-py: silently 0
    ("redis://127.0.0.1:port/0", "not a valid Redis URL"),
])
def test_bad_storage_is_one_input_error_without_password(tmp_path, url, says):
    """Each bad URL gives InputError(field="storage"): one line, no chained traceback, no
    password. Deterministic: the port is one just closed, so connecting is refused at once."""
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "not-a-journal.jsonl").write_text('not json\n{"task_type": "ocr"}\n')
    url = url.format(tmp=tmp_path, closed=_free_port())
    with pytest.raises(InputError) as caught:
        open_storage(url, tmp_path / "d.journal")
    err = caught.value
    assert err.field == "storage" and says in err.message, err.message
    assert "\n" not in str(err) and "hunter2" not in str(err)
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_a_journal_in_a_read_only_folder_is_an_input_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    with pytest.raises(InputError, match="cannot write the journal file"):
        open_storage(str(folder / "j.journal"), tmp_path / "d.journal")


def test_bad_heartbeat_settings_are_input_errors(tmp_path):
    for hb, grace in [(0, 30), (10, 10), (10, 5)]:
        with pytest.raises(InputError, match="heartbeat_s"):
            open_storage(None, tmp_path / "j", heartbeat_s=hb, grace_s=grace)


def test_redact_removes_passwords_only():
    """Pure string function: exact expected outputs."""
    assert redact("postgresql://u:p%40ss@h:5/db?sslmode=require") == \
        "postgresql://u:***@h:5/db?sslmode=require"
    assert redact("redis://:secret@h:6379/0") == "redis://:***@h:6379/0"
    assert redact("redis://h/0?password=zz&db=1") == "redis://h/0?password=***&db=1"
    assert redact("mysql+pymysql://bob@h/db") == "mysql+pymysql://bob@h/db"
    assert redact("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert redact("/a/b:c@d") == "/a/b:c@d"


def test_sqlite_transactions_take_the_write_lock_first(tmp_path):
    """The SQLite compare-and-set needs BEGIN IMMEDIATE (see storage._serialise_sqlite_writes):
    without it, 3 processes failing the same 200 RUNNING trials once recorded 202 successes.
    Deterministic: it inspects the statements sent, not a race."""
    from sqlalchemy import event

    st = _open(f"sqlite:///{tmp_path / 'x.db'}", tmp_path)
    sent = []
    event.listen(st.storage.engine, "before_cursor_execute",
                 lambda conn, cur, stmt, *a: sent.append(stmt))
    _study(st).ask()
    assert "BEGIN IMMEDIATE" in sent


# -- processes sharing one study ---------------------------------------------------------------

def _toy(url: str, events: Path, seed: int, target: int, **opts) -> subprocess.Popen:
    opts = {"heartbeat": HEARTBEAT_S, "grace": GRACE_S, **opts}
    args = [sys.executable, str(TOY), "--storage", url, "--study", "shared", "--seed", str(seed),
            "--target", str(target), "--events", str(events)]
    for key, value in opts.items():
        flag = f"--{key.replace('_', '-')}"
        args += [flag] if value is True else [flag, str(value)]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=PROC_TIMEOUT_S)
    assert proc.returncode == 0, f"worker exited {proc.returncode}:\n{out}\n{err[-3000:]}"


def _events(events: Path, kind: str) -> list[dict]:
    lines = [line for f in sorted(events.glob("*.jsonl")) for line in f.open()]
    rows = [json.loads(line) for line in lines if line.endswith("\n")]  # skip one being written
    return [r for r in rows if r["event"] == kind]


def _stats(events: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted(events.glob("*.stats.json"))]


def _key(params: dict) -> tuple:
    return (params["x"], params["y"])


def _start_together(events: Path, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + PROC_TIMEOUT_S
    while len(list(events.glob("*.ready"))) < len(procs):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            pytest.fail("a worker did not get ready: "
                        + " | ".join(p.communicate()[1][-2000:] for p in procs))
        time.sleep(0.02)
    (events / "go").touch()


def test_two_processes_complete_one_study(shared_url, tmp_path):
    """Two workers on one study name finish it together: the COMPLETE trials are exactly the
    ones the workers report, each trial number once, each trial evaluated once, each params set
    once, and the 3 enqueued trials, which both workers race to pop (their loops start on one
    signal, after both imported and opened the storage), run exactly once.
    Why not by chance: these are exact counts over every evaluation either process started
    (logged before it sleeps), so a double pop or double finish fails the test whenever one
    happens; that the SQLite lock preventing them is taken is checked deterministically by
    test_sqlite_transactions_take_the_write_lock_first."""
    events, target = tmp_path / "events", 6
    events.mkdir()
    seeded = [{"x": 0.11, "y": 0.5}, {"x": 0.22, "y": 0.5}, {"x": 0.33, "y": 0.5}]
    study = _study(_open(shared_url, tmp_path), "shared")
    for params in seeded:
        study.enqueue_trial(params)
    # grace 30 s: nothing dies here, so no load spike may pass for a dead worker
    procs = [_toy(shared_url, events, seed=s, target=target, sleep=0.05, heartbeat=1,
                  grace=30, barrier=True) for s in (1, 2)]
    _start_together(events, procs)
    for proc in procs:
        _finish(proc)
    trials = _study(_open(shared_url, tmp_path), "shared").trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    stats = _stats(events)
    assert len(stats) == 2
    assert len(complete) == sum(s["completed"] for s in stats)
    assert target <= len(complete) <= target + 1  # two workers: at most one trial beyond
    told = [n for s in stats for n in s["trial_numbers"]]
    assert sorted(told) == sorted(t.number for t in complete)  # each number told once
    started = [e["number"] for e in _events(events, "start")]
    assert sorted(started) == sorted(set(started)) == sorted(told)  # nothing evaluated twice
    assert len({_key(t.params) for t in complete}) == len(complete)
    assert all(sum(_key(t.params) == _key(p) for t in complete) == 1 for p in seeded)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert all(t.constraints == {"c": t.params["x"] - 0.9} for t in complete)


def _wait_for_start(events: Path, proc: subprocess.Popen) -> dict:
    deadline = time.monotonic() + PROC_TIMEOUT_S
    while time.monotonic() < deadline:
        started = _events(events, "start") if events.exists() else []
        if started:
            return started[0]
        if proc.poll() is not None:
            pytest.fail(f"the worker to kill exited early: {proc.communicate()[1][-3000:]}")
        time.sleep(0.05)
    pytest.fail("the worker to kill never started a trial")


def test_killed_worker_trial_is_retried_once(shared_url, tmp_path):
    """A worker SIGKILLed mid-trial leaves a RUNNING trial; a second worker FAILs it once its
    heartbeat is over grace_s old and runs its params again, once, and the study completes.
    Why not by chance: the second worker cannot finish without it (the dead trial counts
    toward the target until it is recovered, so the worker waits for it), the retry starts
    at least grace_s after the dead trial's last heartbeat (asserted), and the counts are exact."""
    events, target = tmp_path / "events", 4
    events.mkdir()
    victim = _toy(shared_url, events, seed=1, target=target, first_sleep=120)
    try:
        killed = _wait_for_start(events, victim)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=PROC_TIMEOUT_S)
    _finish(_toy(shared_url, events, seed=2, target=target, sleep=0.05))
    trials = _study(_open(shared_url, tmp_path), "shared").trials
    dead = trials[killed["number"]]
    assert dead.state == TrialState.FAIL and dead.user_attrs[FAIL_REASON] == "stale"
    retries = [t for t in trials if t.user_attrs.get(RETRY_OF) == dead.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert _key(retries[0].params) == _key(killed["params"])
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == target  # one worker: exactly the target
    assert [_key(t.params) for t in complete].count(_key(killed["params"])) == 1
    assert len({_key(t.params) for t in complete}) == target
    last_beat = dead.system_attrs[HEARTBEAT_ATTR]
    assert retries[0].datetime_start.timestamp() - last_beat >= GRACE_S
    (stats,) = _stats(events)  # only the survivor wrote its stats
    assert stats["retried_stale"] == 1 and stats["completed"] == target


def test_workers_noticing_the_same_stale_trial_retry_it_once(shared_url, tmp_path):
    """Two workers that both read a trial as stale before either acts: the storage accepts only
    one FAIL, so exactly one retry is queued. Deterministic: the interleaving is forced (both
    reads, then both writes) through two independent storage handles, as two processes have."""
    grace_s = 0.3  # short: no worker runs here, so no heartbeat can be late
    a, b = (open_storage(shared_url, tmp_path / "j", heartbeat_s=0.1, grace_s=grace_s)
            for _ in range(2))
    kinds = {"redis": "redis", "postgresql+psycopg2": "rdb", "sqlite": "sqlite"}
    assert a.kind == kinds.get(shared_url.partition(":")[0], "journal")
    assert "s3cret" not in a.url and a.url == redact(shared_url)
    study_a = _study(a, "race")
    trial = study_a.ask()
    trial.suggest_float("x", 0, 1)
    time.sleep(grace_s + 0.2)  # no heartbeat was ever written: its start is the last sign
    study_b = _study(b, "race")
    seen_a = study_a.get_trials(states=(TrialState.RUNNING,))
    seen_b = study_b.get_trials(states=(TrialState.RUNNING,))
    retried = _recover(study_a, seen_a, grace_s) + _recover(study_b, seen_b, grace_s)
    assert retried == [trial.number]
    trials = _study(_open(shared_url, tmp_path), "race").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].user_attrs[RETRY_OF] == 0 and trials[1].params == trials[0].params


# -- one worker in this process --------------------------------------------------------------

def _evaluate(seen: list) -> callable:
    def evaluate(trial: optuna.Trial) -> Evaluation:
        x, y = trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)
        seen.append((trial.number, x, y))
        return Evaluation(values=(x, y), constraints={"c": x - 0.5}, attrs={"note": "ok"})
    return evaluate


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_ctrl_c_fails_the_trial_and_the_next_run_resumes_it(tmp_path, kind):
    """KeyboardInterrupt inside evaluate: the trial is FAIL, its params WAITING, the heartbeat
    thread gone; a second run_worker evaluates those params first and completes the study.
    Deterministic: one thread, no timing in any assertion."""
    url = str(tmp_path / "s.journal") if kind == "journal" else f"sqlite:///{tmp_path / 's.db'}"
    storage = _open(url, tmp_path)
    study = _study(storage)
    interrupted = {}

    def ctrl_c(trial: optuna.Trial) -> Evaluation:
        interrupted.update(x=trial.suggest_float("x", 0, 1), y=trial.suggest_float("y", 0, 1))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_worker(study, ctrl_c, target_trials=3, storage=storage)
    assert not [t for t in threading.enumerate() if t.name.startswith("heartbeat-")]
    first, retry = study.trials
    assert first.state == TrialState.FAIL and first.user_attrs[FAIL_REASON] == "interrupted"
    assert retry.state == TrialState.WAITING and retry.user_attrs[RETRY_OF] == 0
    assert retry.params == interrupted
    seen, told = [], []
    stats = run_worker(study, _evaluate(seen), target_trials=3, storage=storage,
                       on_done=told.append)
    assert seen[0] == (1, interrupted["x"], interrupted["y"])
    assert stats.completed == 3 and stats.trial_numbers == [1, 2, 3]
    assert [t.number for t in told] == [1, 2, 3]
    done = study.trials[1]
    assert done.state == TrialState.COMPLETE and done.constraints == {"c": done.params["x"] - 0.5}
    assert done.user_attrs["note"] == "ok"


def test_errors_fail_the_trial_and_three_in_a_row_stop_the_worker(tmp_path):
    """An evaluation that raises is told FAIL with the error and the worker goes on; three in
    a row re-raise the error. Deterministic: the failures are scripted by trial number."""
    storage = _open(str(tmp_path / "s.journal"), tmp_path)
    study = _study(storage)
    ok = _evaluate([])

    def flaky(trial: optuna.Trial) -> Evaluation:
        if trial.number == 0:
            raise RuntimeError("first trial breaks")
        return ok(trial)

    stats = run_worker(study, flaky, target_trials=2, storage=storage)
    assert (stats.completed, stats.failed) == (2, 1)
    assert study.trials[0].user_attrs["error"] == "RuntimeError: first trial breaks"

    def broken(trial: optuna.Trial) -> Evaluation:
        raise ValueError("bad input")

    stats = WorkerStats()
    with pytest.raises(ValueError, match="bad input"):
        run_worker(study, broken, target_trials=5, storage=storage, stats=stats)
    assert stats.failed == 3
    assert [t.state for t in study.trials[3:]] == [TrialState.FAIL] * 3
    assert not any(t.state == TrialState.WAITING for t in study.trials)  # errors: no retry


def test_a_trial_taken_over_while_running_is_dropped_and_its_retry_runs(tmp_path):
    """If another worker wrongly declares our trial stale (we were frozen past grace_s), our
    result is refused, counted as lost, and the retry runs the params. Deterministic: the
    takeover is done from inside evaluate through a second storage handle."""
    url = str(tmp_path / "s.journal")
    storage = _open(url, tmp_path)
    study = _study(storage)
    other = _study(_open(url, tmp_path))
    seen = []
    ok = _evaluate(seen)

    def frozen_worker(trial: optuna.Trial) -> Evaluation:
        result = ok(trial)
        if trial.number == 0:
            (mine,) = other.get_trials(states=(TrialState.RUNNING,))
            _enqueue_retry(other, _fail_running(other, mine, "stale"), "stale")
        return result

    stats = run_worker(study, frozen_worker, target_trials=2, storage=storage)
    assert (stats.lost, stats.completed, stats.trial_numbers) == (1, 2, [1, 2])
    first, retry = study.trials[:2]
    assert first.state == TrialState.FAIL and first.user_attrs[FAIL_REASON] == "stale"
    assert retry.user_attrs[RETRY_OF] == 0 and retry.params == first.params
    assert seen[1] == (1, first.params["x"], first.params["y"])
