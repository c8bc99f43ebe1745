"""Training and length-generalisation evaluation on the state-tracking tasks.

``RunConfig`` describes a run; ``train(config, out_dir)`` trains, evaluates and writes logs, checkpoints
and ``result.json``; ``evaluate`` measures accuracy and scaled accuracy per length bin; ``run_sweep``
runs a grid of runs in worker processes; ``write_report`` turns results into a markdown table and plots.
"""

from lrnn.training.config import PRECISIONS, PROTOCOLS, Protocol, RunConfig
from lrnn.training.evaluation import count_correct, evaluate, format_bins, length_bins, scaled_accuracy
from lrnn.training.optim import learning_rate, make_optimizer, parameter_groups
from lrnn.training.trainer import (Run, RunOutcome, SavedRun, evaluate_run, load_run, make_eval_task, open_run,
                                   read_log, train)

__all__ = ["PRECISIONS", "PROTOCOLS", "Protocol", "Run", "RunConfig", "RunOutcome", "SavedRun", "count_correct", "evaluate",
           "evaluate_run", "format_bins", "learning_rate", "length_bins", "load_run", "make_eval_task",
           "make_optimizer", "open_run", "parameter_groups", "read_log", "scaled_accuracy", "train"]
