"""Majority-class baselines of the evaluation sets of docs/results/s4d (the same sequences the runs see).

Run from the repository root: ``python docs/results/s4d/majority_baseline.py``. It redraws each task's
evaluation set exactly as ``lrnn.training.evaluate`` does (bin i from a generator seeded with
eval_seed + i) and prints the share of the most common answer, as accuracy and as scaled accuracy.
"""

import torch

from lrnn.tasks import make_task
from lrnn.training.evaluation import length_bins, scaled_accuracy

EVAL_SEED = 1234
# evaluation task: (eval_min, eval_max, eval_bins, eval_samples), as in sweep.toml
SETS = {"listops": (16, 128, 4, 256), "sequential_digits_test": (64, 64, 1, 1024)}

for name, (lo, hi, bins, samples) in SETS.items():
    task = make_task(name)
    counts = torch.zeros(task.num_classes)
    for i, (a, b) in enumerate(length_bins(lo, hi, bins)):
        batch = task.sample(samples, a, b, torch.Generator().manual_seed(EVAL_SEED + i))
        counts += torch.bincount(batch.targets[batch.targets >= 0], minlength=task.num_classes)
    share = counts / counts.sum()
    top = int(share.argmax())
    print(f"{name}: majority class {top}: accuracy {share[top]:.3f}, scaled accuracy "
          f"{scaled_accuracy(float(share[top]), task.num_classes):.3f}; class shares {[round(float(x), 3) for x in share]}")
