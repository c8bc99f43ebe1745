"""Functional recurrences: each op has a sequential reference (``mode="recurrent"``) and a parallel
fast path (``mode="chunk"``) that is tested against it, and the recurrences an O(1) single-token step
(``decay_step``, ``delta_step``: the decode step, tested against the reference). Layout everywhere:
[batch, time, heads, dim], with time = 1 for a step.
"""

from lrnn.ops._checks import check_seq_starts  # packed documents: bool [B, T], True at each start
from lrnn.ops._chunking import cache_blocks, compute_dtype
from lrnn.ops.decay import decay_from_values, negative_range, reset_at_starts
from lrnn.ops.diagonal import decay_recurrence, decay_step, expand_groups
from lrnn.ops.delta import delta_chunk_size, delta_rule, delta_step
from lrnn.ops.conv import short_conv
from lrnn.ops.selective_scan import selective_scan
from lrnn.ops.hippo import S4D_INITS, check_state_size, ptd_legs, s4d_eigenvalues  # S4D's eigenvalue inits
from lrnn.ops.s4d import DISCRETIZATIONS as S4D_DISCRETIZATIONS, s4d_discretize, s4d_kernel, s4d_scan
# Token trees for speculative decoding: the ops run over a tree with the ancestor mask (docs/speculative.md).
from lrnn.ops.tree import TokenTree, TreeNodeStates, token_tree, tree_leaves, tree_path, tree_positions
from lrnn.ops.tree_attention import tree_attention
from lrnn.ops.tree_conv import tree_conv_state, tree_short_conv
from lrnn.ops.tree_decay import tree_decay_recurrence, tree_decay_state
from lrnn.ops.tree_delta import tree_delta_rule, tree_delta_state
from lrnn.ops.tree_s4d import S4DTreeStates, tree_s4d_scan, tree_s4d_state

__all__ = ["cache_blocks", "check_seq_starts", "compute_dtype", "decay_recurrence", "decay_step", "expand_groups", "delta_chunk_size", "delta_rule", "delta_step",
           "short_conv", "decay_from_values", "negative_range", "reset_at_starts", "selective_scan", "S4D_INITS", "check_state_size", "ptd_legs",
           "s4d_eigenvalues", "S4D_DISCRETIZATIONS", "s4d_discretize", "s4d_kernel", "s4d_scan",
           "TokenTree", "TreeNodeStates", "token_tree", "tree_leaves", "tree_path", "tree_positions", "tree_attention",
           "tree_conv_state", "tree_short_conv", "tree_decay_recurrence", "tree_decay_state", "tree_delta_rule",
           "tree_delta_state", "S4DTreeStates", "tree_s4d_scan", "tree_s4d_state"]
