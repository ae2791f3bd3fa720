"""YiVideo's lock log lines, written by the real lock client during a replay (`--yivideo-log`).

The lines, their levels and their order are those of YiVideo's `services/common/locks.py`
(wionch/YiVideo, commit 49653d3f, read 2026-11-28): logger ``locks``, format
``%(asctime)s - %(name)s - %(levelname)s - %(message)s`` (services/common/logger.py), root level
INFO, so the DEBUG lines never reach a file. ``{task}`` is the Celery task name (the same for
every instance of a type; here the trace's task type); there is no task id in any line.

Per task, in order: the decorator's "开始获取锁 ... (机制: M, 超时: N秒)", the lock manager's
"开始获取锁 ... (机制: M, 最大等待: N秒)" (start_time is taken between the two), then one of
"通过事件驱动立即获取锁", "通过事件驱动获取锁 (等待时间)", "通过轮询获取锁 (等待时间, 重试次数)"
(retries counted within the polling phase only), or the timeout lines (the polling loop's, then
the event path's, then the decorator's "无法获取锁 ...，任务放弃执行"); after an acquisition
"开始执行", "执行完成", and the release: "释放锁 ... (原因: normal)" or "尝试释放不持有的锁 ...
(当前值: V)" followed by the decorator's "使用应急方式释放锁 KEY". YiVideo's statistics lines
("锁统计", GPU memory clean-up) are left out: they carry no timing of their own.
`gpusim.traces.yivideo_logs` reads these lines back; this module is its test oracle's pen.
"""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["LOG_FORMAT", "LOGGER_NAME", "YiVideoLockLog"]

LOGGER_NAME = "locks"
LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


class YiVideoLockLog:
    """A file handler on the ``locks`` logger for the duration of a replay (``with`` block)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.logger = logging.getLogger(LOGGER_NAME)
        self._handler: logging.Handler | None = None
        self._saved: tuple[int, bool] | None = None

    def __enter__(self) -> "YiVideoLockLog":
        self._handler = logging.FileHandler(self.path, mode="w", encoding="utf-8")
        self._handler.setFormatter(logging.Formatter(LOG_FORMAT))
        self._saved = (self.logger.level, self.logger.propagate)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False  # the file only, not whatever the root logger prints
        self.logger.addHandler(self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handler is not None:
            self.logger.removeHandler(self._handler)
            self._handler.close()
            self._handler = None
        if self._saved is not None:
            self.logger.setLevel(self._saved[0])
            self.logger.propagate = self._saved[1]

    # -- the decorator (gpu_lock wrapper) --------------------------------------------------
    def begin(self, task: str, key: str, event_driven: bool, max_wait: float) -> None:
        self.logger.info(f"任务 {task} 开始获取锁 '{key}' (机制: {_mech(event_driven)}, "
                         f"超时: {max_wait}秒)")

    def executing(self, task: str) -> None:
        self.logger.info(f"任务 {task} 开始执行")

    def executed(self, task: str) -> None:
        self.logger.info(f"任务 {task} 执行完成")

    def gave_up(self, task: str, key: str) -> None:
        self.logger.error(f"任务 {task} 无法获取锁 '{key}'，任务放弃执行")

    def emergency(self, key: str) -> None:
        self.logger.warning(f"使用应急方式释放锁 {key}")

    # -- the lock manager -------------------------------------------------------------------
    def acquiring(self, task: str, key: str, event_driven: bool, max_wait: float) -> None:
        self.logger.info(f"任务 {task} 开始获取锁 '{key}' (机制: {_mech(event_driven)}, "
                         f"最大等待: {max_wait}秒)")

    def got_immediately(self, task: str, key: str) -> None:
        self.logger.info(f"任务 {task} 通过事件驱动立即获取锁 '{key}'")

    def got_by_event(self, task: str, key: str, wait: float) -> None:
        self.logger.info(f"任务 {task} 通过事件驱动获取锁 '{key}' (等待时间: {wait:.2f}秒)")

    def got_by_polling(self, task: str, key: str, wait: float, retries: int) -> None:
        self.logger.info(f"任务 {task} 通过轮询获取锁 '{key}' (等待时间: {wait:.2f}秒, "
                         f"重试次数: {retries})")

    def still_waiting(self, task: str, waited: float, retries: int) -> None:
        self.logger.info(f"任务 {task} 已等待 {waited:.1f}秒，重试 {retries} 次")

    def polling_timeout(self, task: str, key: str, wait: float, retries: int) -> None:
        self.logger.error(f"任务 {task} 轮询获取锁 '{key}' 超时 (等待时间: {wait:.2f}秒, "
                          f"重试次数: {retries})")

    def event_timeout(self, task: str, key: str, wait: float) -> None:
        self.logger.error(f"任务 {task} 事件驱动获取锁 '{key}' 超时 (等待时间: {wait:.2f}秒)")

    def released(self, task: str, key: str, reason: str = "normal") -> None:
        self.logger.info(f"任务 {task} 释放锁 '{key}' (原因: {reason})")

    def not_owner(self, task: str, key: str, value: str | None) -> None:
        self.logger.warning(f"任务 {task} 尝试释放不持有的锁 '{key}' (当前值: {value})")


def _mech(event_driven: bool) -> str:
    return "event_driven" if event_driven else "polling"
