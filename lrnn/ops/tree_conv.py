"""The short causal depthwise convolution over a token tree.

Node m's window holds, from newest to oldest, m itself, its parent, its grandparent, ... and, once its
path runs out, the committed conv state (the last W-1 committed inputs, newest last): exactly the
window ``short_conv`` sees at m when m's root-to-node path is appended to the committed sequence,

    y_m[d] = act( bias[d] + sum_{w<W} weight[d, w] x_{lag W-1-w of m}[d] ).

Implemented as one gather of every node's W inputs from [committed state, x] (a table of the W-1
nearest ancestors per node), then a weighted sum: O(N W D).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lrnn.ops import _checks
from lrnn.ops import conv
from lrnn.ops.tree import TokenTree, tree_and_rows
from lrnn.validation import check_int

__all__ = ["tree_short_conv", "tree_conv_state"]


def tree_short_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    parents: torch.Tensor | TokenTree,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    state_node: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``short_conv`` over a token tree: every node's output, as if its root-to-node path had run.

    Args:
        x: [B, N, D] (N tree nodes in topological order). weight: [D, W]. bias: [D] or None.
        parents: as in ``tree_decay_recurrence`` ([N] parent indices or a ``TokenTree``).
        activation: None or ``"silu"``, applied after the bias.
        initial_state: [B, W-1, D], the committed conv state (the last W-1 committed inputs; None: zeros).
        state_node: also return the conv state after this node (the last W-1 inputs of its path): an
            int, or a LongTensor [B] (one node per sequence); -1 is the root. None: no state.

    Returns:
        ``(y, state)``: y [B, N, D]; state [B, W-1, D] or None unless ``state_node`` is given.
    """
    conv._check(x, weight, bias, activation, initial_state, "chunk")
    width = weight.shape[1]
    tree, rows = tree_and_rows(parents, state_node, x)
    sequence = _with_history(x, initial_state, width)
    windows = sequence[:, _window_index(tree, width)]  # [B, N, W, D], oldest input first
    y = (windows * weight.t()).sum(2)
    if bias is not None:
        y = y + bias
    if activation == "silu":
        y = F.silu(y)
    return y, (None if rows is None else _state_at(sequence, tree, width, rows))


def tree_conv_state(
    x: torch.Tensor,
    *,
    parents: torch.Tensor | TokenTree,
    node: int | torch.Tensor,
    width: int,
    initial_state: torch.Tensor | None = None,
) -> torch.Tensor:
    """The conv state after ``node`` (the last W-1 inputs of its path, older ones from ``initial_state``):
    the committed conv state to carry on from once ``node``'s path is accepted.

    Args:
        x: [B, N, D]. parents: as in ``tree_short_conv``. node: an int or a LongTensor [B] (one per
            sequence); -1 is the root. width: W, the kernel width. initial_state: [B, W-1, D] or None.

    Returns:
        [B, W-1, D].
    """
    _checks.check_tensor("x", x, 3, "[batch, nodes, channels]")
    check_int("width (the kernel width W)", width, 1)
    _checks.check_state(initial_state, (x.shape[0], width - 1, x.shape[2]), "[batch, width-1, channels]", x)
    tree, rows = tree_and_rows(parents, node, x)
    return _state_at(_with_history(x, initial_state, width), tree, width, rows)


def _with_history(x: torch.Tensor, initial_state: torch.Tensor | None, width: int) -> torch.Tensor:
    """[committed state, x]: [B, W-1+N, D] (a zero history without a state)."""
    b, _, d = x.shape
    history = x.new_zeros(b, width - 1, d) if initial_state is None else initial_state.to(x.dtype)
    return torch.cat([history, x], dim=1)


def _window_index(tree: TokenTree, width: int) -> torch.Tensor:
    """[N, W] indices into [committed state (W-1), x (N)]: node m's inputs at lags W-1, ..., 1, 0.

    The ancestor at lag l exists while l <= depth(m); past it, lag l reads the committed state at
    ``W-1 - (l - depth(m))`` (the state's last entry right before the path's first node). Built once
    per tree and width (``TokenTree.derived``): every conv of every layer shares it."""
    return tree.derived(("conv_window", width), lambda t: _build_window_index(t, width))


def _build_window_index(tree: TokenTree, width: int) -> torch.Tensor:
    history = width - 1
    lag_node = [torch.arange(tree.num_nodes, device=tree.parents.device)]
    for _ in range(1, width):  # ancestors at lags 1..W-1 (-1 past the root)
        previous = lag_node[-1]
        lag_node.append(torch.where(previous >= 0, tree.parents[previous.clamp(min=0)], previous))
    lags = torch.stack(lag_node[::-1], dim=1)  # [N, W], lag W-1 first
    lag = torch.arange(width - 1, -1, -1, device=lags.device)  # the lag of each column
    from_history = history - (lag[None, :] - tree.depths[:, None])
    return torch.where(lags >= 0, history + lags, from_history)


def _state_at(sequence: torch.Tensor, tree: TokenTree, width: int, rows: torch.Tensor) -> torch.Tensor:
    """The last W-1 inputs on each row's path: [B, W-1, D]; row -1 keeps the committed state."""
    history = width - 1
    index = _window_index(tree, width)[:, 1:]  # lags W-2..0 of each node
    root = torch.arange(history, device=sequence.device)  # the committed state itself
    index = torch.cat([index, root[None, :]], dim=0)  # row N: the root
    chosen = index[torch.where(rows < 0, tree.num_nodes, rows)]  # [B, W-1]
    return torch.gather(sequence, 1, chosen[:, :, None].expand(-1, -1, sequence.shape[-1]))
