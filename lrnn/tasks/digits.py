"""Sequential image classification on scikit-learn's bundled 8x8 digits, pixel by pixel (no download).

Each image (1797 in all, intensities 0..16) becomes 64 tokens in row-major order, quantised to
``levels`` intensity tokens (``levels=17``: the raw intensities); the class (10 digits) is the answer
at the last pixel. A fixed split: a seed-0 permutation of the 1797 images, the last 20 % (359 images)
is ``split="test"``, the rest ``"train"``. Training draws images with replacement (``sample``); an
evaluation scores every image of the split once (``fixed_items``). Needs scikit-learn (``pip install 'lrnn[tasks]'``).
"""

from __future__ import annotations

import functools

import torch

from lrnn.tasks.base import Task, TaskBatch, final_targets
from lrnn.validation import check_int

IMAGE_PIXELS = 64
TEST_FRACTION = 0.2
SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels [1797, 64] long in 0..16, labels [1797] long) from scikit-learn's bundled copy."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the sequential_digits task needs scikit-learn: pip install 'lrnn[tasks]' "
                          "(or pip install scikit-learn)") from None
    data = load_digits()
    return torch.as_tensor(data.data).long(), torch.as_tensor(data.target).long()


def split_indices(split: str, count: int) -> torch.Tensor:
    """Indices of ``split`` ("train" or "test") among ``count`` images: a fixed seed-0 permutation,
    the last round(TEST_FRACTION * count) are the test set."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(SPLIT_SEED))
    test = round(TEST_FRACTION * count)
    return order[count - test:] if split == "test" else order[:count - test]


class SequentialDigits(Task):
    """Pixel-by-pixel digits. Tokens: 0..levels-1 (intensity bins), ``levels`` pads. 10 classes at the
    last pixel; every sequence has exactly 64 tokens (min_length = max_length = 64)."""

    name = "sequential_digits"
    answer_positions = "final"
    num_classes = 10
    min_supported_length = IMAGE_PIXELS

    def __init__(self, split: str = "train", levels: int = 17) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        check_int("levels", levels, 2, 17)
        pixels, labels = load_digits_tensors()
        index = split_indices(split, pixels.shape[0])
        # Bin intensities 0..16 into `levels` equal-width bins (identity when levels = 17).
        self.pixels = torch.div(pixels[index] * levels, 17, rounding_mode="floor")
        self.labels = labels[index]
        self.split, self.levels = split, levels
        self.name = "sequential_digits" if split == "train" else "sequential_digits_test"  # registry names
        # Training on the train split evaluates on the test split (RunConfig.eval_task = None).
        self.test_split = "sequential_digits_test" if split == "train" and levels == 17 else None
        self.vocab_size, self.pad_id = levels + 1, levels
        self.description = (f"8x8 digit images ({split} split, {len(index)} images) read pixel by pixel "
                            f"(64 tokens, intensities in {levels} levels 0-{levels - 1}; {levels} pads); "
                            "answer at the last pixel: the digit (10 classes)")

    def _draw_lengths(self, batch_size, min_length, max_length, generator) -> torch.Tensor:
        if max_length != IMAGE_PIXELS:
            raise ValueError(f"sequential_digits sequences have exactly {IMAGE_PIXELS} tokens: use "
                             f"min_length = max_length = {IMAGE_PIXELS}, got max_length = {max_length}")
        return torch.full((batch_size,), IMAGE_PIXELS, dtype=torch.long)

    def _generate(self, lengths: torch.Tensor, generator: torch.Generator | None) -> TaskBatch:
        """Images drawn uniformly (with replacement) from the split."""
        return self._images(torch.randint(0, self.labels.shape[0], (lengths.shape[0],), generator=generator))

    def fixed_items(self) -> TaskBatch:
        """Every image of the split once, in split order: inputs and targets [N, 64], lengths [N]."""
        return self._images(torch.arange(self.labels.shape[0]))

    def _images(self, index: torch.Tensor) -> TaskBatch:
        """The images ``index`` [B] of the split as a batch (all 64 tokens long, the digit at the last)."""
        lengths = torch.full((index.shape[0],), IMAGE_PIXELS, dtype=torch.long)
        return TaskBatch(self.pixels[index], final_targets(self.labels[index], lengths, IMAGE_PIXELS),
                         lengths)
