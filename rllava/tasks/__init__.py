"""Offline synthetic tasks: the `TASKS` registry and `make_task` (what `rllava make-task` runs)."""
from rllava.tasks import arithmetic, boxes, calculate, choice, compare, counting, geometry, motion, search, zoom  # noqa: F401  (registers the tasks)
from rllava.tasks.base import TASKS, Sample, make_task, split_sizes, task_options
from rllava.tasks.layouts import LAYOUTS, make_task_in_layout

__all__ = ["LAYOUTS", "TASKS", "Sample", "make_task", "make_task_in_layout", "split_sizes", "task_options"]
