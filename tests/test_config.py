"""Lock config and cluster files: YiVideo's defaults, overrides, strict field-by-field errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpusim.cluster import load_cluster
from gpusim.config import GpuLockConfig, load_lock_settings, parse_lock_settings
from gpusim.errors import InputError

ROOT = Path(__file__).resolve().parents[1]

YIVIDEO_LIKE = """\
# other sections of a YiVideo config.yml are ignored
redis:
    host: redis
    port: 6379
paddleocr_service:
    lang: ch
gpu_lock:
    poll_interval: 2
    max_wait_time: 1800
    lock_timeout: 3600
    exponential_backoff: true
    max_poll_interval: 10
gpu_lock_monitor:
    monitor_interval: 30
    timeout_levels: {warning: 1800, soft_timeout: 3600, hard_timeout: 7200}
    health_thresholds: {min_success_rate: 0.8}
"""


def test_examples_hold_production_and_candidate_values():
    today = load_lock_settings(ROOT / "examples/config.yml", environ={}).gpu_lock
    cand = load_lock_settings(ROOT / "examples/optimized.yml", environ={}).gpu_lock
    assert (today.poll_interval, today.max_wait_time, today.lock_timeout,
            today.max_poll_interval) == (2, 1800, 3600, 10)
    assert (cand.poll_interval, cand.max_wait_time, cand.lock_timeout,
            cand.max_poll_interval) == (0.5, 300, 600, 5)
    # absent keys take YiVideo's defaults
    assert today.use_event_driven is True and today.fallback_timeout == 30


def test_a_whole_yivideo_config_is_read_as_it_is(tmp_path):
    path = tmp_path / "config.yml"
    path.write_text(YIVIDEO_LIKE)
    s = load_lock_settings(path, environ={})
    assert s.gpu_lock.poll_interval == 2 and s.gpu_lock.max_poll_interval == 10
    assert s.gpu_lock_monitor.timeout_levels.hard_timeout == 7200


def test_bare_gpu_lock_yaml_and_defaults():
    s = parse_lock_settings({"poll_interval": 1.0}, environ={})
    assert s.gpu_lock == GpuLockConfig(poll_interval=1.0)
    d = parse_lock_settings(None, environ={}).gpu_lock
    assert (d.poll_interval, d.max_wait_time, d.lock_timeout, d.max_poll_interval) == (
        0.5, 300, 600, 5)


def test_environment_overrides_win_over_the_file():
    s = parse_lock_settings({"gpu_lock": {"poll_interval": 2, "max_poll_interval": 10}},
                            environ={"GPU_LOCK_POLL_INTERVAL": "1.0",
                                     "GPU_LOCK_USE_EVENT_DRIVEN": "false",
                                     "UNRELATED": "x"})
    assert s.gpu_lock.poll_interval == 1.0 and s.gpu_lock.use_event_driven is False


def test_unknown_environment_override_is_an_error():
    with pytest.raises(InputError) as e:
        parse_lock_settings({}, environ={"GPU_LOCK_POLL_INTERVALL": "1"})
    assert e.value.field == "GPU_LOCK_POLL_INTERVALL"


@pytest.mark.parametrize("body,field,line", [
    ("gpu_lock:\n  poll_interval: -1\n", "gpu_lock.poll_interval", 2),
    ("gpu_lock:\n  max_wait_time: 0\n", "gpu_lock.max_wait_time", 2),
    ("gpu_lock:\n  poll_interval: 1\n  max_poll_interval: 0.5\n",
     "gpu_lock.max_poll_interval", 3),
    ("gpu_lock:\n  lock_timeout: 1.5\n", "gpu_lock.lock_timeout", 2),
    ("gpu_lock:\n  fallback_timeout: .nan\n", "gpu_lock.fallback_timeout", 2),
    ("gpu_lock:\n  exponential_backoff: maybe\n", "gpu_lock.exponential_backoff", 2),
    ("gpu_lock_monitor:\n  monitor_interval: 0\n", "gpu_lock_monitor.monitor_interval", 2),
    ("poll_interval: 1\nlock_timout: 5\n", "lock_timout", 2),
])
def test_invalid_values_are_rejected_with_file_line_field(tmp_path, body, field, line):
    path = tmp_path / "c.yml"
    path.write_text(body)
    with pytest.raises(InputError) as e:
        load_lock_settings(path, environ={})
    errs = getattr(e.value, "errors", [e.value])
    assert any(x.field == field and x.line == line and x.file == str(path) for x in errs), \
        [x.render() for x in errs]


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("gpu_lock:\n  poll_interval: [1\n")
    with pytest.raises(InputError) as e:
        load_lock_settings(path, environ={})
    assert e.value.file == str(path) and e.value.line is not None


def test_example_cluster_and_per_node_configs(tmp_path):
    k = load_cluster(ROOT / "examples/cluster.yml")
    assert [n.name for n in k.nodes] == ["node0", "node1"] and k.nodes[0].gpus == 4
    assert k.service_of("ffmpeg") == "ffmpeg_service" and k.workers_of("ffmpeg_service") == 8
    (tmp_path / "canary.yml").write_text("gpu_lock:\n  poll_interval: 0.5\n")
    (tmp_path / "k.yml").write_text(
        "nodes:\n  - {name: a, gpus: 2, config: canary.yml}\n"
        "  - {name: b, config: {gpu_lock: {poll_interval: 3, max_poll_interval: 3}}}\n")
    k2 = load_cluster(tmp_path / "k.yml")
    assert k2.nodes[0].settings.gpu_lock.poll_interval == 0.5
    assert k2.nodes[1].settings.gpu_lock.poll_interval == 3 and k2.nodes[1].gpus == 1


@pytest.mark.parametrize("body,field,line", [
    ("nodes: 0\n", "nodes", 1),
    ("gpus_per_node: 2\nworkers_per_service: 0\n", "workers_per_service", 2),
    ("redis:\n  rtt_s: -1\n", "redis.rtt_s", 2),
    ("nodes:\n  - {name: a}\n  - {name: a}\n", "nodes", 1),
    ("options:\n  fencing: true\n", "options.fencing", 2),
])
def test_bad_cluster_files(tmp_path, body, field, line):
    path = tmp_path / "k.yml"
    path.write_text(body)
    with pytest.raises(InputError) as e:
        load_cluster(path)
    errs = getattr(e.value, "errors", [e.value])
    assert any(x.field == field and x.line == line for x in errs), [x.render() for x in errs]
