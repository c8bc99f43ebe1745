"""Sequence tasks: state tracking (parity, modular arithmetic, Chomsky regular tasks, group word
problems) and long-range tasks. Every task implements ``lrnn.tasks.base.Task``; ``make_task(name)``
builds one from the registry.
"""

import functools

from lrnn.tasks.arithmetic import (ArithmeticBrackets, arithmetic, modular_arithmetic_left_to_right,
                                   modular_arithmetic_simple)
from lrnn.tasks.base import IGNORE_INDEX, Task, TaskBatch
from lrnn.tasks.groups import GROUP_TASKS, GroupWordProblem
from lrnn.tasks.parity import Parity, ParityCheck
from lrnn.tasks.regular import CycleNavigation, EvenPairs
from lrnn.tasks.listops import ListOps
from lrnn.tasks.recall import AssociativeRecall, SelectiveCopy
from lrnn.tasks.digits import SequentialDigits

TASKS: dict[str, type[Task] | object] = {
    "parity": Parity,
    # state tracking (lrnn/tasks/arithmetic.py, regular.py, groups.py; docs/tasks.md)
    "arithmetic": arithmetic,
    "arithmetic_brackets": ArithmeticBrackets,
    "even_pairs": EvenPairs,
    "parity_check": ParityCheck,
    "cycle_navigation": CycleNavigation,
    "modular_arithmetic_simple": modular_arithmetic_simple,
    "modular_arithmetic_left_to_right": modular_arithmetic_left_to_right,
    **GROUP_TASKS,
    # long-range tasks (lrnn/tasks/listops.py, recall.py, digits.py; docs/s4d.md)
    "listops": ListOps,
    "selective_copy": SelectiveCopy,
    "associative_recall": AssociativeRecall,
    "sequential_digits": SequentialDigits,  # the train split; needs scikit-learn
    "sequential_digits_test": functools.partial(SequentialDigits, "test"),
}
"""Task name -> a zero-argument factory (a Task subclass or a function) returning the task."""


def make_task(name: str) -> Task:
    """The task registered under ``name``; a clear error lists the known names."""
    if not isinstance(name, str) or name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]()


__all__ = ["IGNORE_INDEX", "TASKS", "Task", "TaskBatch", "make_task", "Parity", "ParityCheck", "EvenPairs",
           "CycleNavigation", "ArithmeticBrackets", "GroupWordProblem", "ListOps",
           "SelectiveCopy", "AssociativeRecall", "SequentialDigits"]
