"""The S4D tree op (``tree_s4d_scan`` / ``tree_s4d_state``): every node's output and the state after any
node equal the sequential S4D recurrence (``s4d_scan(mode="recurrent")``) run along that node's
root-to-node path from the committed state; float64 to 1e-10, float32 to 1e-4, gradients of every input
(the complex parameters and state included), both discretisations, random trees of odd sizes.
"""

from __future__ import annotations

import pytest
import torch

from lrnn.ops import s4d_scan, token_tree, tree_leaves, tree_path, tree_s4d_scan, tree_s4d_state
from test_s4d_op import assert_close, ssm_inputs
from test_tree_ops import TREE, random_parents

F64, F32 = torch.float64, torch.float32
DISCS = pytest.mark.parametrize("disc", ["zoh", "bilinear"])
STATE = pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "state"])


def s4d_args(n: int, batch: int = 3, h: int = 5, m: int = 4, seed: int = 0, dtype=F64, state: bool = True) -> dict:
    """``test_s4d_op.ssm_inputs`` (random stable SSM parameters) with node inputs u [batch, n, h] and the
    committed state (None without ``state``)."""
    return dict(initial_state=None) | ssm_inputs(B=batch, T=n, H=h, M=m, seed=seed, dtype=dtype, state=state)


def on_path(args: dict, path: torch.Tensor, batch=slice(None)) -> dict:
    """The inputs of the sequence ``path`` (batch rows ``batch``)."""
    out = dict(args, u=args["u"][batch][:, path])
    if args["initial_state"] is not None:
        out["initial_state"] = args["initial_state"][batch]
    return out


def node_reference(args: dict, parents: torch.Tensor, nodes: torch.Tensor, disc: str):
    """Each node's output from a sequential run of its own path [B, N, H], and the state after nodes[b]
    for each sequence b [B, H, M] (the committed state, or zeros, for -1)."""
    outputs = [s4d_scan(**on_path(args, tree_path(parents, m)), discretization=disc, mode="recurrent")[0][:, -1]
               for m in range(len(parents))]
    states = []
    for b, m in enumerate(nodes.tolist()):
        one = on_path(args, tree_path(parents, m), slice(b, b + 1))
        states.append(s4d_scan(**one, discretization=disc, mode="recurrent", output_final_state=True)[1])
    return torch.stack(outputs, dim=1), torch.cat(states, dim=0)


def check_leaves(args: dict, parents: torch.Tensor, disc: str, tol: float, reference_args: dict | None = None):
    """Along every root-to-leaf path: the tree outputs == the sequential outputs, and the state after the
    leaf == the sequential final state. ``reference_args``: the same inputs in float64."""
    reference_args = args if reference_args is None else reference_args
    for leaf in tree_leaves(parents).tolist():
        path = tree_path(parents, leaf)
        y, state = tree_s4d_scan(**args, discretization=disc, parents=parents, state_node=leaf)
        expected_y, expected_state = s4d_scan(**on_path(reference_args, path), discretization=disc,
                                              mode="recurrent", output_final_state=True)
        assert y.shape == args["u"].shape and y.dtype == args["u"].dtype
        assert_close(y[:, path], expected_y, tol, f"outputs on the path to leaf {leaf}")
        assert_close(state, expected_state, tol, f"state after leaf {leaf}")


@TREE
@DISCS
@STATE
def test_paths_float64(kind, n, disc, with_state):
    check_leaves(s4d_args(n, seed=n, state=with_state), random_parents(kind, n, seed=n), disc, 1e-10)


@DISCS
def test_paths_float32(disc):
    parents = random_parents("random", 19, seed=4)
    args64 = s4d_args(19, seed=4)
    args32 = {name: (x.to(torch.complex64) if x.is_complex() else x.float()) for name, x in args64.items()}
    check_leaves(args32, parents, disc, 1e-4, reference_args=args64)


@pytest.mark.parametrize("kind,n", [("deep", 13), ("ternary", 12), ("random", 9)])
@DISCS
def test_gradients(kind, n, disc):
    """Gradients of ``sum(y * dy) + Re sum(x_node * dx)`` w.r.t. u, A, B, C, dt, D and the committed state
    (complex ones included) agree with the per-node sequential reference; nodes per sequence include the
    root (-1)."""
    parents = random_parents(kind, n, seed=n)
    args = s4d_args(n, seed=n + 1)
    nodes = torch.tensor([n - 1, -1, n // 2])
    names = list(args)

    def run(op):
        leaves = {name: x.detach().clone().requires_grad_(True) for name, x in args.items()}
        y, state = op(leaves)
        g = torch.Generator().manual_seed(99)
        loss = (y * torch.randn(y.shape, generator=g, dtype=F64)).sum() + (
            state * torch.randn(state.shape, generator=g, dtype=torch.complex128)).real.sum()
        return y, state, torch.autograd.grad(loss, [leaves[name] for name in names])

    tree = run(lambda a: tree_s4d_scan(**a, discretization=disc, parents=parents, state_node=nodes))
    reference = run(lambda a: node_reference(a, parents, nodes, disc))
    assert_close(tree[0], reference[0], 1e-10, "outputs")
    assert_close(tree[1], reference[1], 1e-10, "node states")
    for name, actual, expected in zip(names, tree[2], reference[2]):
        assert_close(actual, expected, 1e-10, f"gradient of {name}")


@STATE
def test_state_on_demand(with_state):
    """``tree_s4d_state`` (no C, D) == the state of ``tree_s4d_scan`` == the sequential reference, for an
    int node, a node per sequence (root included) and a prebuilt TokenTree."""
    parents = random_parents("wide", 17, seed=2)
    args = s4d_args(17, seed=2, state=with_state)
    nodes = torch.tensor([16, -1, 5])
    state_args = {name: args[name] for name in ("u", "A", "B", "dt", "initial_state")}
    expected = node_reference(args, parents, nodes, "zoh")[1]
    assert_close(tree_s4d_state(**state_args, parents=token_tree(parents), node=nodes), expected, 1e-10, "per sequence")
    assert_close(tree_s4d_scan(**args, parents=parents, state_node=nodes)[1], expected, 1e-10, "from the scan")
    for node in (-1, 0, 11):
        want = node_reference(args, parents, torch.full((3,), node), "zoh")[1]
        assert_close(tree_s4d_state(**state_args, parents=parents, node=node), want, 1e-10, f"node {node}")
    assert tree_s4d_scan(**args, parents=parents)[1] is None


@DISCS
@STATE
def test_state_after_any_node(disc, with_state):
    """``state_node="any"``: ``S4DTreeStates.state_after(m)`` == the sequential state after m for every node,
    the root and a node per sequence, float64 to 1e-10, and its gradients (u, A, B, dt, the committed
    state) equal those of ``state_node=m``; the outputs are the plain pass's."""
    parents = random_parents("random", 13, seed=6)
    args = s4d_args(13, seed=6, state=with_state)
    y, states = tree_s4d_scan(**args, discretization=disc, parents=parents, state_node="any")
    assert_close(y, tree_s4d_scan(**args, discretization=disc, parents=parents)[0], 0.0, "outputs")
    for node in [-1, *range(13)]:
        want = node_reference(args, parents, torch.full((3,), node), disc)[1]
        assert_close(states.state_after(node), want, 1e-10, f"node {node}")
    nodes = torch.tensor([12, -1, 4])
    assert_close(states.state_after(nodes), node_reference(args, parents, nodes, disc)[1], 1e-10, "per sequence")
    grad_args = {name: x.detach().clone().requires_grad_(True) if isinstance(x, torch.Tensor) else x
                 for name, x in args.items()}
    leaves = [name for name in ("u", "A", "B", "dt", "initial_state") if grad_args[name] is not None]
    weight = torch.randn(3, 5, 4, dtype=torch.complex128, generator=torch.Generator().manual_seed(1))
    grads = []
    for request in ("any", nodes):
        _, state = tree_s4d_scan(**grad_args, discretization=disc, parents=parents, state_node=request)
        state = state.state_after(nodes) if request == "any" else state
        grads.append(torch.autograd.grad((state * weight).real.sum(), [grad_args[name] for name in leaves]))
    for name, a, b in zip(leaves, *grads):
        assert_close(a, b, 1e-12, f"gradient of {name}")
    with pytest.raises(ValueError, match='state_node must be an int, a LongTensor'):
        tree_s4d_scan(**args, parents=parents, state_node="all")


def test_chain_is_the_sequence_op():
    """A chain tree is the sequence: its outputs equal ``s4d_scan``'s FFT path."""
    args = s4d_args(21, seed=5)
    y, state = tree_s4d_scan(**args, parents=torch.arange(21) - 1, state_node=20)
    expected_y, expected_state = s4d_scan(**args, output_final_state=True)
    assert_close(y, expected_y, 1e-10, "outputs")
    assert_close(state, expected_state, 1e-10, "final state")


def test_empty_tree():
    args = s4d_args(0, seed=1)
    y, state = tree_s4d_scan(**args, parents=torch.zeros(0, dtype=torch.long), state_node=-1)
    assert y.shape == (3, 0, 5)
    assert_close(state, args["initial_state"], 0.0, "root state")


@pytest.mark.parametrize("change,error,match", [
    (dict(u=torch.randn(3, 7)), ValueError, "u must be"),
    (dict(A=torch.randn(5, 4)), ValueError, "A must be"),
    (dict(dt=torch.rand(4)), ValueError, "dt must be"),
    (dict(initial_state=torch.zeros(2, 5, 4, dtype=torch.complex128)), ValueError, "initial_state"),
    (dict(parents=torch.tensor([0, 0, 0, 0, 0, 0, 0])), ValueError, "parents"),
    (dict(parents=torch.arange(6) - 1), ValueError, "tree nodes"),
    (dict(state_node=7), ValueError, "node"),
    (dict(state_node=torch.tensor([0.5, 0.0, 1.0])), TypeError, "node"),
    (dict(discretization="euler"), ValueError, "discretization"),
])
def test_bad_input(change, error, match):
    args = dict(s4d_args(7), parents=torch.arange(7) - 1, state_node=None)
    args.update(change)
    with pytest.raises(error, match=match):
        tree_s4d_scan(**args)
