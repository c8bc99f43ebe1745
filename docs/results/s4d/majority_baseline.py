"""Majority-class baselines of the evaluation sets of docs/results/s4d (the same sequences the runs saw).

Run from the repository root: ``python docs/results/s4d/majority_baseline.py``. It redraws each task's
evaluation set exactly as ``lrnn.training.evaluate`` did for the committed runs (bin i from a generator
seeded with eval_seed + i; for sequential_digits_test that was 1024 draws with replacement, from before
the evaluation scored a fixed split's items once each) and prints the share of the most common answer,
as accuracy and as scaled accuracy; then the same for the whole fixed test split, each image once (what
``evaluate`` scores now).
"""

import torch

from lrnn.tasks import make_task
from lrnn.training.evaluation import length_bins, scaled_accuracy

EVAL_SEED = 1234
# evaluation task: (eval_min, eval_max, eval_bins, eval_samples), as in sweep.toml
SETS = {"listops": (16, 128, 4, 256), "sequential_digits_test": (64, 64, 1, 1024)}



def answer_counts(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """How often each class is the answer among ``targets`` (unsupervised positions skipped)."""
    return torch.bincount(targets[targets >= 0], minlength=num_classes).double()


def print_majority(label: str, counts: torch.Tensor) -> None:
    share = counts / counts.sum()
    top = int(share.argmax())
    print(f"{label}: majority class {top}: accuracy {share[top]:.3f}, scaled accuracy "
          f"{scaled_accuracy(float(share[top]), len(counts)):.3f}; class shares {[round(float(x), 3) for x in share]}")


for name, (lo, hi, bins, samples) in SETS.items():
    task = make_task(name)
    counts = torch.zeros(task.num_classes, dtype=torch.float64)
    for i, (a, b) in enumerate(length_bins(lo, hi, bins)):
        batch = task.sample(samples, a, b, torch.Generator().manual_seed(EVAL_SEED + i))
        counts += answer_counts(batch.targets, task.num_classes)
    print_majority(name, counts)

split = make_task("sequential_digits_test").fixed_items()
print_majority(f"sequential_digits_test, every image once ({len(split.lengths)})", answer_counts(split.targets, 10))
