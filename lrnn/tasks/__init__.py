"""Sequence tasks: state tracking (parity, modular arithmetic, Chomsky regular tasks, group word
problems) and long-range tasks. Every task implements ``lrnn.tasks.base.Task``; ``make_task(name)``
builds one from the registry.
"""

from lrnn.tasks.base import IGNORE_INDEX, Task, TaskBatch
from lrnn.tasks.parity import Parity

TASKS: dict[str, type[Task] | object] = {
    "parity": Parity,
}
"""Task name -> a zero-argument factory (a Task subclass or a function) returning the task."""


def make_task(name: str) -> Task:
    """The task registered under ``name``; a clear error lists the known names."""
    if not isinstance(name, str) or name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]()


__all__ = ["IGNORE_INDEX", "TASKS", "Task", "TaskBatch", "make_task", "Parity"]
