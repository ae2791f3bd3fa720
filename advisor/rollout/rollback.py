"""`gpusim rollback plan`: back to the last stable config in the history (GPU_LOCK_CONFIG_004).

The plan names the entry to restore, the `gpu_lock:` block to paste into config.yml, the
equivalent GPU_LOCK_* environment overrides (GPU_LOCK_CONFIG_003), and the checks that say the
system is healthy again, within the spec's 5 minutes. How long a rollback really takes to show
in the waits is `gpusim rollback simulate` (advisor.rollout.recovery): the config changes at
once, but tasks already waiting keep the config they read, and a queue built up under the bad
config has to drain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpusim import GpuLockConfig

from advisor.rollout.history import ENV_PREFIX, HistoryEntry, head_sha256

SPEC_RECOVERY_S = 300.0   # GPU_LOCK_CONFIG_004: "5 分钟内系统恢复正常" (healthy within 5 minutes)

# The spec's rollback triggers (design/yivideo-lock.md, "Acceptance thresholds"; GPU_LOCK_CONFIG
# 002/004): after a rollback each must be back on the healthy side within 5 minutes.
HEALTH_CHECKS = (
    {"check": "task timeout rate", "healthy": "< 5%",
     "source": "GPU_LOCK_CONFIG_002 gate; rollback trigger > 5%"},
    {"check": "Redis CPU", "healthy": "< 80%",
     "source": "GPU_LOCK_CONFIG_002 gate; rollback trigger > 80%"},
    {"check": "lock acquisition failure rate", "healthy": "< 10%",
     "source": "GPU_LOCK_CONFIG_002 gate; rollback trigger > 10%"},
    {"check": "GET /api/v1/monitoring/gpu-lock/health | jq .overall_status", "healthy":
     "healthy", "source": "GPU_LOCK_CONFIG_004 rollback script (30 s after the switch)"},
)


class NoStableConfig(Exception):
    """The history holds no stable config other than the current one (exit 1)."""


def value_text(v: Any) -> str:
    """A gpu_lock value as YAML and environment text that reads back to the same value:
    booleans lower case, whole floats without `.0`, other floats as repr (exact)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    return str(v)


def gpu_lock_yaml(cfg: GpuLockConfig) -> str:
    """The block to paste into config.yml (exact values; advisor.tune.gpu_lock_yaml rounds to
    6 digits for its rounded recommendations, a rollback must restore the values as they were)."""
    return "gpu_lock:\n" + "".join(f"  {k}: {value_text(v)}\n"
                                   for k, v in cfg.model_dump().items())


def env_lines(cfg: GpuLockConfig) -> list[str]:
    return [f"export {ENV_PREFIX}{k.upper()}={value_text(v)}"
            for k, v in cfg.model_dump().items()]


@dataclass(frozen=True)
class RollbackPlan:
    history: str
    head_sha256: str
    current: HistoryEntry
    target: HistoryEntry
    skipped: list[int] = field(default_factory=list)  # stable entries with the current config

    @property
    def changed(self) -> dict[str, list[Any]]:
        now, then = self.current.gpu_lock.model_dump(), self.target.gpu_lock.model_dump()
        return {k: [now[k], then[k]] for k in now if now[k] != then[k]}

    def steps(self, config_path: str = "config.yml") -> list[str]:
        t = self.target.doc
        return [
            f"replace the gpu_lock block of {config_path} with the block below (YiVideo re-reads "
            f"config.yml for every task: tasks that start acquiring after the change use it, "
            f"tasks already waiting keep the config they read); or set the GPU_LOCK_* "
            f"overrides below on every GPU service (environment changes need a restart)",
            f"within {SPEC_RECOVERY_S:.0f} s, check each health check below; a queue built up "
            f"under the bad config can take longer to drain: `gpusim rollback simulate` says "
            f"how long",
            f"record it: gpusim history add {config_path} --history {self.history} --why "
            f"\"rollback to #{t['seq']}\" (add --stable once the checks pass)",
        ]

    def to_json(self) -> dict[str, Any]:
        t = self.target.doc
        return {
            "schema": "gpusim.rollback-plan/1",
            "history": self.history, "head_sha256": self.head_sha256,
            "current": {"seq": self.current.seq, "config_digest": self.current.digest,
                        "gpu_lock": self.current.doc["config"]["gpu_lock"]},
            "target": {"seq": t["seq"], "at": t["at"], "who": t["who"], "why": t["why"],
                       "config_digest": t["config_digest"], "source": t["config"]["source"],
                       "gpu_lock": t["config"]["gpu_lock"]},
            "changed": self.changed,
            "yaml": gpu_lock_yaml(self.target.gpu_lock),
            "env": env_lines(self.target.gpu_lock),
            "steps": self.steps(),
            "checks": [dict(c, within_s=SPEC_RECOVERY_S) for c in HEALTH_CHECKS],
            "skipped_stable_same_config": self.skipped,
        }


def plan_rollback(entries: list[HistoryEntry], history: str) -> RollbackPlan:
    """The last entry marked stable before the current (last) one whose config differs from
    the current config: rolling back to the config already running would change nothing."""
    if not entries:
        raise NoStableConfig(f"{history}: the history is empty")
    current = entries[-1]
    skipped = []
    for e in reversed(entries[:-1]):
        if not e.stable:
            continue
        if e.digest == current.digest:
            skipped.append(e.seq)
            continue
        return RollbackPlan(history, head_sha256(entries), current, e, skipped)
    note = (f" (stable entries {', '.join(f'#{s}' for s in skipped)} hold the current config)"
            if skipped else "")
    raise NoStableConfig(f"{history}: no stable config before the current one (#{current.seq}) "
                         f"to go back to{note}; mark a known-good config with "
                         f"`gpusim history add CONFIG --stable`")
