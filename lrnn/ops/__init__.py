"""Functional recurrences: each op has a sequential reference (``mode="recurrent"``) and a parallel
fast path (``mode="chunk"``) that is tested against it. Layout everywhere: [batch, time, heads, dim].
"""

from lrnn.ops.decay import decay_from_values, negative_range
from lrnn.ops.diagonal import decay_recurrence
from lrnn.ops.delta import delta_rule
from lrnn.ops.conv import short_conv

__all__ = ["decay_recurrence", "delta_rule", "short_conv", "decay_from_values", "negative_range"]
