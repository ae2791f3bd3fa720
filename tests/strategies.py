"""Hypothesis strategies: random traces, lock configs and clusters small enough to run fast.

The tests that use them check exact invariants or exact equality per drawn case, never a
statistical band, so a drawn case cannot fail by chance (see test_properties).
"""

from __future__ import annotations

from hypothesis import strategies as st

from gpusim.cluster import ClusterSpec, build_cluster
from gpusim.config import GpuLockConfig
from gpusim.traces.format import trace_from_rows

TYPES = ("ocr", "ffmpeg", "whisper")


@st.composite
def max_wait_overrides(draw):
    """The max_wait_time_by_type option: none (YiVideo), or a wait for some task types."""
    if not draw(st.booleans()):
        return {}
    return draw(st.dictionaries(st.sampled_from(TYPES), st.sampled_from([0.5, 1.0, 4.0, 30.0]),
                                min_size=1))


@st.composite
def clusters(draw, allow_monitor: bool = True, wait_overrides: bool = False):
    nodes = draw(st.integers(1, 2))
    gpus = draw(st.integers(1, 3))
    spec = ClusterSpec(
        nodes=nodes, gpus_per_node=gpus,
        gpu_policy=draw(st.sampled_from(["pinned", "round_robin", "probe_all"])),
        workers_per_service=draw(st.integers(1, 4)),
        redis={"rtt_s": draw(st.sampled_from([0.0, 0.0002, 0.003, 0.05])),
               "client_subscribe_delay_s": draw(st.sampled_from([0.0, 0.0005, 0.02])),
               "pubsub_wakeup_jitter_s": draw(st.sampled_from([0.0, 0.0005, 0.01]))},
        options={"unique_owner_token": draw(st.booleans()),
                 "emergency_delete": draw(st.booleans()),
                 "monitor": draw(st.booleans()) if allow_monitor else False,
                 "shared_keys_across_nodes": draw(st.booleans()),
                 "max_wait_time_by_type": draw(max_wait_overrides()) if wait_overrides
                 else {}})
    return build_cluster(spec)


@st.composite
def traces(draw, cluster, max_tasks: int = 25):
    n = draw(st.integers(1, max_tasks))
    rows = []
    integer_times = draw(st.booleans())  # exact ties between arrivals exercise tie-breaking
    for _ in range(n):
        if integer_times:
            arrival = float(draw(st.integers(0, 60)))
            duration = float(draw(st.integers(1, 80)))
        else:
            arrival = draw(st.floats(0, 200, allow_nan=False))
            duration = draw(st.floats(0.05, 120, allow_nan=False))
        row = {"task_type": draw(st.sampled_from(TYPES)), "arrival_s": arrival,
               "duration_s": duration, "crashed": draw(st.booleans().map(lambda b: b and
                                                                       draw(st.booleans())))}
        if draw(st.booleans()):
            node = draw(st.sampled_from(cluster.nodes))
            row["node"] = node.name
            row["gpu"] = draw(st.integers(0, node.gpus - 1))
        rows.append(row)
    return trace_from_rows(rows)


@st.composite
def lock_configs(draw):
    poll = draw(st.sampled_from([0.05, 0.3, 0.5, 1.0, 2.0]))
    return GpuLockConfig(
        poll_interval=poll,
        max_poll_interval=poll * draw(st.sampled_from([1.0, 2.0, 10.0])),
        max_wait_time=draw(st.sampled_from([1.0, 5.0, 30.0, 300.0])),
        lock_timeout=draw(st.sampled_from([1, 10, 60, 600])),
        exponential_backoff=draw(st.booleans()),
        use_event_driven=draw(st.booleans()),
        fallback_timeout=draw(st.sampled_from([0.5, 5.0, 30.0])),
    )


@st.composite
def scenarios(draw, allow_monitor: bool = True, max_tasks: int = 25,
              wait_overrides: bool = False):
    """(trace, cluster, lock config, seed). `wait_overrides` draws the max_wait_time_by_type
    option too (off by default: tests that bound waits by the config's max_wait_time)."""
    cluster = draw(clusters(allow_monitor, wait_overrides))
    trace = draw(traces(cluster, max_tasks))
    return trace, cluster, draw(lock_configs()), draw(st.integers(0, 2**32 - 1))


@st.composite
def config_schedules(draw, cluster, trace, max_changes: int = 3):
    """Config changes (gpusim.schedule) for a scenario: times at arrivals (acquire starts when
    a slot is free: exact ties with a change), at whole seconds or anywhere; on every node or
    one; never two at one time on one node (refused by design)."""
    from gpusim.config import LockSettings
    from gpusim.schedule import ConfigChange

    arrivals = sorted({float(t.arrival_s) for t in trace.tasks})
    names = [n.name for n in cluster.nodes]
    out: list = []
    for _ in range(draw(st.integers(0, max_changes))):
        at = draw(st.one_of(st.sampled_from(arrivals), st.integers(0, 90).map(float),
                            st.floats(0, 200, allow_nan=False)))
        node = draw(st.one_of(st.none(), st.sampled_from(names)))
        if any(c.at_s == at and (c.node is None or node is None or c.node == node)
               for c in out):
            continue
        out.append(ConfigChange(at, LockSettings(gpu_lock=draw(lock_configs())), node))
    return out
