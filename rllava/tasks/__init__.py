"""Offline synthetic tasks: the `TASKS` registry and `make_task` (what `rllava make-task` runs)."""
from rllava.tasks import arithmetic, boxes, compare, counting, geometry, motion, search, zoom  # noqa: F401  (registers the tasks)
from rllava.tasks.base import TASKS, Sample, make_task, split_sizes, task_options

__all__ = ["TASKS", "Sample", "make_task", "split_sizes", "task_options"]
