"""Memory tasks: selective copying (Gu & Dao 2023) and associative recall (Ba et al. 2016; Zoology).

Selective copying: K data tokens scattered among blanks must be reproduced, in order, after the
sequence ends; it needs content-dependent memory, which is where LTI models such as S4D are weak.
Associative recall: key-value pairs, then a query key; the answer is the value paired with it.
"""

from __future__ import annotations

import torch

from lrnn.tasks.base import IGNORE_INDEX, Task, TaskBatch, final_targets, id_list, lengths_of_parity, padding_mask
from lrnn.validation import check_int


class SelectiveCopy(Task):
    """Selective copying with ``num_tokens`` data symbols and ``num_memorize`` = K tokens to copy.

    A sequence of length L: positions [0, L - K) hold the K data tokens (0..num_tokens-1, at random
    positions, order kept) among blanks (``num_tokens``); positions [L - K, L) hold the copy marker
    (``num_tokens + 1``); padding is ``num_tokens + 2``. Targets: the K data tokens, in order, at the
    last K positions (``answer_positions = "suffix"``: several answers, scored per sequence like
    "every"); IGNORE_INDEX elsewhere. Classes: num_tokens. Lengths >= 2K.
    """

    name = "selective_copy"
    answer_positions = "suffix"

    def __init__(self, num_tokens: int = 8, num_memorize: int = 4) -> None:
        check_int("num_tokens", num_tokens, 2)
        check_int("num_memorize", num_memorize, 1)
        self.num_tokens, self.num_memorize = num_tokens, num_memorize
        self.blank_id, self.marker_id, self.pad_id = num_tokens, num_tokens + 1, num_tokens + 2
        self.vocab_size, self.num_classes = num_tokens + 3, num_tokens
        self.min_supported_length = 2 * num_memorize
        self.description = (f"{num_memorize} data tokens (0-{num_tokens - 1}) among blanks ({self.blank_id}), "
                            f"then {num_memorize} markers ({self.marker_id}; {self.pad_id} pads); answers at "
                            f"the markers: the data tokens in order ({num_tokens} classes)")

    def _generate(self, lengths: torch.Tensor, generator: torch.Generator | None) -> TaskBatch:
        b, t, k = lengths.shape[0], int(lengths.max()), self.num_memorize
        pos = torch.arange(t)[None, :]
        body = pos < (lengths - k)[:, None]  # where the data may go
        # K distinct random body positions per row: the K largest random scores, then in order.
        scores = torch.rand(b, t, generator=generator).masked_fill(~body, -1.0)
        where = torch.topk(scores, k, dim=1).indices.sort(dim=1).values
        data = torch.randint(0, self.num_tokens, (b, k), generator=generator)
        inputs = torch.full((b, t), self.blank_id, dtype=torch.long)
        inputs[~padding_mask(lengths, t)] = self.pad_id
        inputs[(pos >= (lengths - k)[:, None]) & padding_mask(lengths, t)] = self.marker_id
        inputs.scatter_(1, where, data)
        targets = torch.full((b, t), IGNORE_INDEX, dtype=torch.long)
        answer_at = (lengths - k)[:, None] + torch.arange(k)[None, :]
        targets.scatter_(1, answer_at, data)
        return TaskBatch(inputs, targets, lengths)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        names = {self.blank_id: ".", self.marker_id: "?"}
        return " ".join(names.get(i, str(i)) for i in id_list(ids) if i != self.pad_id)


class AssociativeRecall(Task):
    """Associative recall over ``num_keys`` keys and ``num_values`` values.

    A sequence of odd length L = 2P + 1: P pairs ``key value`` (keys 0..num_keys-1, values
    num_keys..num_keys+num_values-1, both drawn with replacement), then a query key drawn from the keys
    of the sequence. The answer, at the last token, is the value of the query's most recent pair
    (class = value id - num_keys; num_values classes). Padding: num_keys + num_values. Lengths >= 3.
    """

    name = "associative_recall"
    answer_positions = "final"
    min_supported_length = 3

    def __init__(self, num_keys: int = 16, num_values: int = 16) -> None:
        check_int("num_keys", num_keys, 2)
        check_int("num_values", num_values, 2)
        self.num_keys, self.num_values = num_keys, num_values
        self.pad_id = num_keys + num_values
        self.vocab_size, self.num_classes = num_keys + num_values + 1, num_values
        self.description = (f"pairs 'key value' (keys 0-{num_keys - 1}, values {num_keys}-{self.pad_id - 1}; "
                            f"{self.pad_id} pads), then a query key; answer at the last token: the value of "
                            f"its most recent pair ({num_values} classes); odd lengths")

    def _draw_lengths(self, batch_size, min_length, max_length, generator) -> torch.Tensor:
        return lengths_of_parity(batch_size, min_length, max_length, 1, generator, self.name)

    def _generate(self, lengths: torch.Tensor, generator: torch.Generator | None) -> TaskBatch:
        b, t = lengths.shape[0], int(lengths.max())
        pairs = (lengths - 1) // 2  # [B]
        p = max(int(pairs.max()), 1)
        keys = torch.randint(0, self.num_keys, (b, p), generator=generator)
        values = torch.randint(0, self.num_values, (b, p), generator=generator)
        real_pair = torch.arange(p)[None, :] < pairs[:, None]
        # Query: the key of a uniformly chosen real pair; answer: the value of that key's last real pair.
        chosen = (torch.rand(b, generator=generator) * pairs).long()
        query = keys.gather(1, chosen[:, None])  # [B, 1]
        match = (keys == query) & real_pair
        last = torch.where(match, torch.arange(p)[None, :], -1).max(dim=1).values
        answers = values.gather(1, last[:, None]).squeeze(1)
        inputs = torch.full((b, t), self.pad_id, dtype=torch.long)
        interleaved = torch.stack([keys, values + self.num_keys], dim=2).reshape(b, 2 * p)
        width = min(2 * p, t)
        inputs[:, :width] = torch.where(torch.arange(width)[None, :] < 2 * pairs[:, None],
                                        interleaved[:, :width], self.pad_id)
        inputs[torch.arange(b), lengths - 1] = query.squeeze(1)
        return TaskBatch(inputs, final_targets(answers, lengths, t), lengths)
