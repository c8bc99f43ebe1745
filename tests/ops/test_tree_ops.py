"""Tests of the tree ops (speculative tree verification): every node's output and the state after any
node equal the sequential op (``mode="recurrent"``) run along that node's root-to-node path.

Trees: a chain (== the ordinary op), a star, a flat tree (every node a child of the root), a static
b-ary tree, deep and wide random trees, with node counts that are multiples of nothing in particular.
Each root-to-leaf path is run from the committed state and every node on it is compared; gradients are
compared with a reference that runs each node's own path once (so each output counts once).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lrnn.layers.baselines import Attention, rotary
from lrnn.ops import (decay_recurrence, delta_rule, short_conv, token_tree, tree_attention, tree_conv_state,
                      tree_decay_recurrence, tree_decay_state, tree_delta_rule, tree_delta_state, tree_leaves,
                      tree_path, tree_positions, tree_short_conv)

from ops_helpers import (F32, F64, TOL_F32, TOL_F64, assert_close, decay_recurrence_inputs, delta_rule_inputs,
                         generator, normal, short_conv_inputs)


def random_parents(kind: str, n: int, seed: int = 0) -> torch.Tensor:
    """Parent indices [n] of a tree of the given ``kind`` (topological order, -1 = child of the root)."""
    gen = generator(seed)
    index = torch.arange(n)
    if kind == "chain":
        return index - 1
    if kind == "star":  # one node, all others its children
        return torch.where(index == 0, -1, 0)
    if kind == "flat":  # every node a child of the committed state
        return torch.full((n,), -1)
    if kind == "ternary":  # the static tree of STree: 3 children per node, 3 root children
        return index // 3 - 1
    uniform = torch.floor(torch.rand(n, generator=gen, dtype=F64) * (index + 1)).long() - 1  # in [-1, i-1]
    if kind == "random":
        return uniform
    if kind == "deep":  # mostly extends the previous node, sometimes branches anywhere
        return torch.where(torch.rand(n, generator=gen) < 0.8, index - 1, uniform)
    if kind == "wide":  # branches off the first few nodes
        return torch.minimum(uniform, torch.full((n,), 2))
    raise ValueError(kind)


TREES = [("chain", 11), ("star", 9), ("flat", 5), ("ternary", 26), ("random", 23), ("deep", 31), ("wide", 17),
         ("random", 1)]
TREE = pytest.mark.parametrize("kind,n", TREES, ids=[f"{k}{n}" for k, n in TREES])
GATES = pytest.mark.parametrize("gate", [False, True], ids=["no_gate", "gate"])
HOUSEHOLDER = pytest.mark.parametrize("num_householder", [1, 2, 3], ids=["nh1", "nh2", "nh3"])
MODES = pytest.mark.parametrize("mode", ["chunk", "recurrent"])
DECAY_RANGES = pytest.mark.parametrize("decay_range", [(0.0, 1.0), (-1.0, 1.0)], ids=["pos", "neg"])
TIMED = ("q", "k", "v", "beta", "log_decay", "decay_negative", "x")  # inputs with a node (time) axis
PER_STEP = ("k", "v", "beta")  # the delta rule's inputs with n_h rows per node


def path_args(args: dict, path: torch.Tensor, n_h: int = 1, batch=slice(None)) -> dict:
    """The inputs of the sequence ``path`` (and batch rows ``batch``): per-node tensors indexed by the path,
    the delta rule's per-step tensors by the path's n_h steps per node; weights and caches unchanged."""
    steps = (path[:, None] * n_h + torch.arange(n_h)).flatten()
    out = {}
    for name, x in args.items():
        if name in TIMED and x is not None:
            out[name] = x[batch].index_select(1, steps if name in PER_STEP else path)
        elif name == "initial_state" and x is not None:
            out[name] = x[batch]
        else:
            out[name] = x
    return out


def check_paths(tree_op, sequence_op, args: dict, parents: torch.Tensor, tol: float, reference_args=None,
                n_h: int = 1, mode: str | None = None, **options) -> None:
    """Every root-to-leaf path: the tree outputs on it == the sequence op's outputs, and the state after
    the leaf (via ``state_node``) == the sequence op's final state. ``reference_args``: the same inputs in
    float64 for float32 runs. ``mode``: the tree op's mode (None: its default)."""
    tree_mode = {} if mode is None else {"mode": mode}
    reference_args = args if reference_args is None else reference_args
    batch = next(iter(args.values())).shape[0]
    for leaf in tree_leaves(parents).tolist():
        path = tree_path(parents, leaf)
        o, state = tree_op(**args, parents=parents, state_node=leaf, **tree_mode, **options)
        expected_o, expected_state = sequence_op(**path_args(reference_args, path, n_h), mode="recurrent",
                                                 output_final_state=True, **options)
        assert o.shape[:2] == (batch, len(parents))
        assert_close(o[:, path], expected_o, tol, f"outputs on the path to leaf {leaf}")
        assert_close(state, expected_state, tol, f"state after leaf {leaf}")


def node_reference(sequence_op, args: dict, parents: torch.Tensor, nodes: torch.Tensor, n_h: int = 1, **options):
    """Each node's output from a sequential run of its own path [B, N, ...], and the state after
    ``nodes[b]`` for each sequence b [B, ...] (the input state for -1)."""
    outputs = [sequence_op(**path_args(args, tree_path(parents, m), n_h), mode="recurrent", **options)[0][:, -1]
               for m in range(len(parents))]
    states = []
    for b, m in enumerate(nodes.tolist()):
        one = path_args(args, tree_path(parents, m), n_h, batch=slice(b, b + 1))
        if m == -1:
            states.append(one["initial_state"])
        else:
            states.append(sequence_op(**one, mode="recurrent", output_final_state=True, **options)[1])
    return torch.stack(outputs, dim=1), torch.cat(states, dim=0)


def check_gradients(tree_op, sequence_op, args: dict, parents: torch.Tensor, nodes: torch.Tensor, n_h: int = 1,
                    mode: str | None = None, **options) -> None:
    """Gradients of ``sum(o * do) + sum(S_node * dS)`` w.r.t. every floating-point input agree."""
    names = [n for n, x in args.items() if isinstance(x, torch.Tensor) and x.is_floating_point()]

    def run(op):
        leaves = {n: (x.detach().clone().requires_grad_(True) if n in names else x) for n, x in args.items()}
        o, state = op(leaves)
        gen = generator(99)
        loss = (o * normal(o.shape, gen)).sum() + (state * normal(state.shape, gen)).sum()
        return o, state, torch.autograd.grad(loss, [leaves[n] for n in names])

    tree_mode = {} if mode is None else {"mode": mode}
    tree = run(lambda a: tree_op(**a, parents=parents, state_node=nodes, **tree_mode, **options))
    reference = run(lambda a: node_reference(sequence_op, a, parents, nodes, n_h, **options))
    assert_close(tree[0], reference[0], TOL_F64, "outputs")
    assert_close(tree[1], reference[1], TOL_F64, "node states")
    for name, actual, expected in zip(names, tree[2], reference[2]):
        assert_close(actual, expected, TOL_F64, f"gradient of {name}")


def some_nodes(parents: torch.Tensor, batch: int) -> torch.Tensor:
    """One node per sequence for the state checks: the last node, then the root (-1), then others."""
    n = len(parents)
    return torch.tensor([n - 1, -1, n // 2][:batch])


# ---------------------------------------------------------------- structure


def test_ancestor_mask_and_depths_by_hand():
    """A small forest: the mask marks each node and its ancestors, depths count strict ancestors."""
    parents = torch.tensor([-1, 0, 0, 1, -1, 4])
    tree = token_tree(parents)
    expected = torch.tensor([[1, 0, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0],
                             [1, 0, 1, 0, 0, 0],
                             [1, 1, 0, 1, 0, 0],
                             [0, 0, 0, 0, 1, 0],
                             [0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(tree.mask, expected)
    assert tree.depths.tolist() == [0, 1, 1, 2, 0, 1]
    assert tree_path(parents, 3).tolist() == [0, 1, 3]
    assert tree_path(parents, -1).tolist() == []
    assert tree_leaves(parents).tolist() == [2, 3, 5]
    assert tree_positions(parents, 10).tolist() == [10, 11, 11, 12, 10, 11]
    assert tree_positions(parents, torch.tensor([3, 5])).tolist() == [[3, 4, 4, 5, 3, 4], [5, 6, 6, 7, 5, 6]]


@TREE
def test_mask_is_the_parent_closure(kind, n):
    """The mask (built by repeated squaring) equals the ancestors found by walking up the parents."""
    parents = random_parents(kind, n, seed=n)
    tree = token_tree(parents)
    for m in range(n):
        walk, node = {m}, int(parents[m])
        while node >= 0:
            walk.add(node)
            node = int(parents[node])
        assert set(torch.nonzero(tree.mask[m]).flatten().tolist()) == walk
        assert int(tree.depths[m]) == len(walk) - 1


# ---------------------------------------------------------------- decay recurrence


@TREE
@DECAY_RANGES
@MODES
@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar", "per_channel"])
def test_decay_paths_float64(kind, n, decay_range, per_channel, mode):
    args = decay_recurrence_inputs(B=2, T=n, H=2, K=4, V=3, per_channel=per_channel, decay_range=decay_range,
                                   seed=n)
    check_paths(tree_decay_recurrence, decay_recurrence, args, random_parents(kind, n, seed=n), TOL_F64, mode=mode,
                scale=0.6)


@MODES
@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar", "per_channel"])
def test_decay_paths_float32(per_channel, mode):
    """Float32 against the float64 reference, on a deep random tree with decays in [-1, 1], a tenth of
    them exactly 0 (path log-sums that cancelled G_m - G_k would lose everything after a zero)."""
    options = dict(B=2, T=40, H=3, K=8, V=5, per_channel=per_channel, zero_fraction=0.1, seed=5)
    args32 = decay_recurrence_inputs(**options, dtype=F32)
    args64 = decay_recurrence_inputs(**options, dtype=F64)
    check_paths(tree_decay_recurrence, decay_recurrence, args32, random_parents("deep", 40, seed=2), TOL_F32,
                reference_args=args64, mode=mode)


@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar", "per_channel"])
@pytest.mark.parametrize("kind,n", [("random", 13), ("ternary", 10)])
@MODES
def test_decay_gradients(kind, n, per_channel, mode):
    """Gradients w.r.t. q, k, v, log|a| and the initial state; a fifth of the decays exactly 0."""
    args = decay_recurrence_inputs(B=3, T=n, H=2, K=3, V=2, per_channel=per_channel, zero_fraction=0.2, seed=n)
    parents = random_parents(kind, n, seed=1)
    check_gradients(tree_decay_recurrence, decay_recurrence, args, parents, some_nodes(parents, 3), mode=mode,
                    scale=0.8)


def test_decay_chain_is_the_sequence_op():
    """A chain is an ordinary sequence: outputs and final state equal the chunked decay_recurrence."""
    args = decay_recurrence_inputs(B=2, T=37, H=2, K=4, V=3, seed=7)
    o, state = tree_decay_recurrence(**args, parents=torch.arange(37) - 1, state_node=36)
    expected_o, expected_state = decay_recurrence(**args, output_final_state=True, chunk_size=16)
    assert_close(o, expected_o, TOL_F64, "outputs")
    assert_close(state, expected_state, TOL_F64, "final state")


@MODES
def test_decay_state_on_demand(mode):
    """tree_decay_state (no queries, either mode) == the state_node output; per-sequence nodes; -1 is the
    input state; a TokenTree built once gives the same results as the parents vector."""
    args = decay_recurrence_inputs(B=3, T=12, H=2, K=4, V=3, seed=8)
    parents = random_parents("random", 12, seed=3)
    nodes = torch.tensor([5, -1, 11])
    o, state = tree_decay_recurrence(**args, parents=parents, state_node=nodes)
    stateless = {n: x for n, x in args.items() if n != "q"}
    assert_close(tree_decay_state(**stateless, parents=parents, node=nodes, mode=mode), state, TOL_F64, "state")
    assert torch.equal(state[1], args["initial_state"][1])
    o_tree, state_tree = tree_decay_recurrence(**args, parents=token_tree(parents), state_node=nodes)
    assert torch.equal(o_tree, o) and torch.equal(state_tree, state)
    assert tree_decay_recurrence(**args, parents=parents)[1] is None
    no_state = {**stateless, "initial_state": None}
    zeros = torch.zeros(3, 2, 4, 3, dtype=F64)
    assert torch.equal(tree_decay_state(**no_state, parents=parents, node=-1, mode=mode), zeros)


@MODES
def test_empty_tree(mode):
    """N = 0: empty outputs; the state after the root is the input state."""
    args = decay_recurrence_inputs(B=2, T=0, H=2, K=4, V=3, seed=9)
    o, state = tree_decay_recurrence(**args, parents=torch.zeros(0, dtype=torch.long), state_node=-1, mode=mode)
    assert o.shape == (2, 0, 2, 3)
    assert torch.equal(state, args["initial_state"])


# ---------------------------------------------------------------- delta rule


@TREE
@GATES
@HOUSEHOLDER
@MODES
def test_delta_paths_float64(kind, n, gate, num_householder, mode):
    """Betas in [0, 2] and gates in [-1, 1] (the extended eigenvalue range)."""
    args = delta_rule_inputs(B=2, T=n, H=2, K=4, V=3, num_householder=num_householder, gate=gate, seed=n)
    check_paths(tree_delta_rule, delta_rule, args, random_parents(kind, n, seed=n), TOL_F64,
                n_h=num_householder, mode=mode, num_householder=num_householder, scale=0.7)


@GATES
def test_delta_paths_positive_range(gate):
    """The original range: betas in [0, 1], gates in [0, 1]."""
    args = delta_rule_inputs(B=2, T=21, H=2, K=4, V=3, num_householder=2, gate=gate, beta_range=(0.0, 1.0),
                             gate_range=(0.0, 1.0), seed=4)
    check_paths(tree_delta_rule, delta_rule, args, random_parents("random", 21, seed=4), TOL_F64, n_h=2,
                num_householder=2)


@GATES
@HOUSEHOLDER
@MODES
def test_delta_paths_float32(gate, num_householder, mode):
    """Float32 against the float64 reference, on a deep random tree (K = 16; some gates exactly 0)."""
    options = dict(B=2, T=29, H=2, K=16, V=8, num_householder=num_householder, gate=gate, zero_fraction=0.1,
                   seed=6)
    args32, args64 = delta_rule_inputs(**options, dtype=F32), delta_rule_inputs(**options, dtype=F64)
    check_paths(tree_delta_rule, delta_rule, args32, random_parents("deep", 29, seed=6), TOL_F32,
                reference_args=args64, n_h=num_householder, mode=mode, num_householder=num_householder)


@GATES
@HOUSEHOLDER
@MODES
def test_delta_gradients(gate, num_householder, mode):
    """Gradients w.r.t. q, k, v, beta, the gate and the initial state (some gates exactly 0)."""
    args = delta_rule_inputs(B=3, T=9, H=2, K=3, V=2, num_householder=num_householder, gate=gate,
                             zero_fraction=0.2, seed=10 + num_householder)
    parents = random_parents("random", 9, seed=5)
    check_gradients(tree_delta_rule, delta_rule, args, parents, some_nodes(parents, 3), n_h=num_householder,
                    mode=mode, num_householder=num_householder)


@HOUSEHOLDER
def test_delta_chain_is_the_sequence_op(num_householder):
    """A chain is an ordinary sequence: outputs and final state equal the chunked delta_rule."""
    args = delta_rule_inputs(B=2, T=19, H=2, K=4, V=3, num_householder=num_householder, seed=12)
    o, state = tree_delta_rule(**args, parents=torch.arange(19) - 1, num_householder=num_householder, state_node=18)
    expected_o, expected_state = delta_rule(**args, num_householder=num_householder, output_final_state=True,
                                            chunk_size=8)
    assert_close(o, expected_o, TOL_F64, "outputs")
    assert_close(state, expected_state, TOL_F64, "final state")


@GATES
@MODES
def test_delta_state_on_demand(gate, mode):
    """tree_delta_state (no queries, either mode) == the state_node output, per-sequence nodes, -1 = the
    input state."""
    args = delta_rule_inputs(B=3, T=10, H=2, K=4, V=3, num_householder=2, gate=gate, seed=13)
    parents = random_parents("wide", 10, seed=2)
    nodes = torch.tensor([-1, 9, 4])
    _, state = tree_delta_rule(**args, parents=parents, num_householder=2, state_node=nodes)
    stateless = {n: x for n, x in args.items() if n != "q"}
    on_demand = tree_delta_state(**stateless, parents=parents, node=nodes, num_householder=2, mode=mode)
    assert_close(on_demand, state, TOL_F64, "state")
    assert torch.equal(state[0], args["initial_state"][0])


@pytest.mark.parametrize("op", ["decay", "decay_per_channel", "delta", "delta_nh2_gate", "delta_no_state"])
def test_state_after_any_node(op):
    """``state_node="any"`` returns a TreeNodeStates whose ``state_after(node)`` equals the ``state_node=node``
    state (itself checked against the sequential op above) for every node, the root -1 and per-sequence
    nodes, in float64, with the same outputs; and gradients through it match."""
    parents = random_parents("random", 12, seed=5)
    if op.startswith("decay"):
        args = decay_recurrence_inputs(B=3, T=12, H=2, K=4, V=3, per_channel=op.endswith("channel"), seed=2)
        run, n_h = tree_decay_recurrence, 1
    else:
        n_h = 2 if "nh2" in op else 1
        args = delta_rule_inputs(B=3, T=12, H=2, K=4, V=3, num_householder=n_h, gate="gate" in op, seed=3,
                                 initial_state=op != "delta_no_state")
        run = lambda **a: tree_delta_rule(**a, num_householder=n_h)  # noqa: E731
    o_any, states = run(**args, parents=parents, state_node="any")
    assert o_any.shape[1] == 12 and states.num_nodes == 12
    for node in [-1, *range(12)]:
        o, expected = run(**args, parents=parents, state_node=node)
        assert torch.equal(o, o_any)
        assert_close(states.state_after(node), expected, TOL_F64, f"state after node {node}")
    nodes = torch.tensor([3, -1, 11])
    assert_close(states.state_after(nodes), run(**args, parents=parents, state_node=nodes)[1], TOL_F64, "per sequence")

    names = [n for n, x in args.items() if isinstance(x, torch.Tensor) and x.is_floating_point() and n != "q"]

    def grads(select):  # the states do not depend on the queries
        leaves = {n: (x.detach().clone().requires_grad_(True) if n in names else x) for n, x in args.items()}
        state = select(leaves)
        loss = (state * normal(state.shape, generator(7))).sum()
        return torch.autograd.grad(loss, [leaves[n] for n in names])

    for got, want in zip(grads(lambda a: run(**a, parents=parents, state_node="any")[1].state_after(7)),
                         grads(lambda a: run(**a, parents=parents, state_node=7)[1])):
        assert_close(got, want, TOL_F64, "gradient through state_after")


def test_state_after_any_node_errors():
    args = decay_recurrence_inputs(B=2, T=5, H=2, K=4, V=3, seed=2)
    with pytest.raises(ValueError, match='needs mode="chunk"'):
        tree_decay_recurrence(**args, parents=torch.arange(5) - 1, state_node="any", mode="recurrent")
    with pytest.raises(ValueError, match="state_node must be"):
        tree_decay_recurrence(**args, parents=torch.arange(5) - 1, state_node="all")
    _, states = tree_decay_recurrence(**args, parents=torch.arange(5) - 1, state_node="any")
    with pytest.raises(ValueError, match="node"):
        states.state_after(5)
    with pytest.raises(ValueError, match="node"):
        states.state_after(torch.tensor([0, 7]))


def test_one_tree_shared_by_every_op():
    """A model passes one TokenTree to every layer, and the ops keep the index tables they derive from it
    (``TokenTree.derived``): convs of several widths, the delta rule with several n_h and gates, and the
    decay recurrence, run in turn on one tree, give exactly what each gives on a fresh tree."""
    parents = random_parents("random", 13, seed=4)
    shared = token_tree(parents)
    runs = []
    for W in (4, 2, 3, 4):
        args = short_conv_inputs(B=2, T=13, D=5, W=W, seed=W)
        runs.append(lambda tree, a=args: tree_short_conv(**a, parents=tree, state_node=7))
    for n_h, gate in ((1, False), (2, True), (3, False), (1, True)):
        args = delta_rule_inputs(B=2, T=13, H=2, K=4, V=3, num_householder=n_h, gate=gate, seed=n_h)
        runs.append(lambda tree, a=args, n=n_h: tree_delta_rule(**a, parents=tree, num_householder=n, state_node=5))
    for per_channel in (False, True):
        args = decay_recurrence_inputs(B=2, T=13, H=2, K=4, V=3, per_channel=per_channel, seed=9)
        runs.append(lambda tree, a=args: tree_decay_recurrence(**a, parents=tree, state_node=12))
    for run in runs + runs:  # twice: the second round reads every table from the shared tree
        for got, expected in zip(run(shared), run(token_tree(parents))):
            assert torch.equal(got, expected)
    assert len(shared._derived) >= 6  # the conv windows per width, sub-step masks per n_h, ...


# ---------------------------------------------------------------- short conv


@TREE
@pytest.mark.parametrize("W", [1, 2, 4])
@pytest.mark.parametrize("activation", [None, "silu"], ids=["linear", "silu"])
def test_conv_paths(kind, n, W, activation):
    """Each node's window: itself, its ancestors, then the committed conv state (also when the path is
    shorter than the window)."""
    args = short_conv_inputs(B=2, T=n, D=5, W=W, seed=n + W)
    parents = random_parents(kind, n, seed=n)
    check_paths(tree_short_conv, short_conv, args, parents, TOL_F64, activation=activation)
    for leaf in tree_leaves(parents).tolist():
        state = tree_conv_state(args["x"], parents=parents, node=leaf, width=W, initial_state=args["initial_state"])
        assert torch.equal(state, tree_short_conv(**args, parents=parents, state_node=leaf)[1])


def test_conv_gradients_and_root_state():
    args = short_conv_inputs(B=3, T=11, D=4, W=4, seed=3)
    parents = random_parents("random", 11, seed=7)
    check_gradients(tree_short_conv, short_conv, args, parents, some_nodes(parents, 3), activation="silu")
    state = tree_conv_state(args["x"], parents=parents, node=-1, width=4, initial_state=None)
    assert torch.equal(state, torch.zeros(3, 3, 4, dtype=F64))


# ---------------------------------------------------------------- attention


def attention_inputs(B=2, N=9, T=6, H=2, D=4, Dv=3, seed=0, dtype=F64) -> dict:
    gen = generator(seed)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[-1, :T // 2] = False  # the last sequence is left-padded
    return dict(q=normal((B, N, H, D), gen, dtype), k=normal((B, N, H, D), gen, dtype),
                v=normal((B, N, H, Dv), gen, dtype), past_k=normal((B, T, H, D), gen, dtype),
                past_v=normal((B, T, H, Dv), gen, dtype), past_valid=valid)


def attention_on_sequence(q, k, v, past_k=None, past_v=None, past_valid=None):
    """The reference: causal attention of a sequence appended to the cache (padding keys ignored)."""
    t, n = (0 if past_k is None else past_k.shape[1]), q.shape[1]
    if past_k is not None:
        k, v = torch.cat([past_k, k], dim=1), torch.cat([past_v, v], dim=1)
    allowed = torch.ones(n, t + n, dtype=torch.bool).tril(t)[None].expand(q.shape[0], n, t + n).clone()
    if past_valid is not None:
        allowed[:, :, :t] &= past_valid[:, None, :]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=allowed[:, None])
    return out.transpose(1, 2)


@TREE
@pytest.mark.parametrize("cache", [False, True], ids=["no_cache", "cache"])
def test_attention_paths(kind, n, cache):
    args = attention_inputs(N=n, seed=n)
    if not cache:
        args = {name: x for name, x in args.items() if not name.startswith("past")}
    parents = random_parents(kind, n, seed=n)
    o = tree_attention(**args, parents=parents)
    for leaf in tree_leaves(parents).tolist():
        path = tree_path(parents, leaf)
        expected = attention_on_sequence(**path_args(args, path))
        assert_close(o[:, path], expected, TOL_F64, f"path to leaf {leaf}")


def test_attention_float32_and_gradients():
    parents = random_parents("deep", 14, seed=1)
    args32, args64 = attention_inputs(N=14, seed=2, dtype=F32), attention_inputs(N=14, seed=2)
    o32 = tree_attention(**args32, parents=parents)
    for leaf in tree_leaves(parents).tolist():
        path = tree_path(parents, leaf)
        expected = attention_on_sequence(**path_args(args64, path))
        assert_close(o32[:, path], expected, TOL_F32, f"float32, path to leaf {leaf}")
    names = ["q", "k", "v", "past_k", "past_v"]

    def grads(op):
        leaves = {n: (x.clone().requires_grad_(True) if n in names else x) for n, x in args64.items()}
        o = op(leaves)
        loss = (o * normal(o.shape, generator(5))).sum()
        return torch.autograd.grad(loss, [leaves[n] for n in names])

    per_node = lambda a: torch.stack([  # noqa: E731 -- each node's own path, last position
        attention_on_sequence(**path_args(a, tree_path(parents, m)))[:, -1]
        for m in range(14)], dim=1)
    for name, actual, expected in zip(names, grads(lambda a: tree_attention(**a, parents=parents)), grads(per_node)):
        assert_close(actual, expected, TOL_F64, f"gradient of {name}")


def test_attention_matches_the_attention_layer():
    """The RoPE positions (cache length + depth, counting real tokens) and the masking reproduce
    lrnn.layers.baselines.Attention run over each root-to-leaf path after a left-padded prompt."""
    torch.manual_seed(0)
    layer = Attention(16, num_heads=2).double()
    prompt_mask = torch.ones(2, 5, dtype=torch.bool)
    prompt_mask[1, :2] = False
    cache: dict = {}
    layer(torch.randn(2, 5, 16, dtype=F64), state=cache, mask=prompt_mask)
    parents = random_parents("random", 12, seed=8)
    hidden = torch.randn(2, 12, 16, dtype=F64)
    q, k, v = layer.qkv(hidden).reshape(2, 12, 3, 2, 8).unbind(2)
    positions = tree_positions(parents, cache["valid"].sum(1))
    q, k = rotary(q, positions, layer.rope_base), rotary(k, positions, layer.rope_base)
    o = tree_attention(q, k, v, parents=parents, past_k=cache["k"], past_v=cache["v"], past_valid=cache["valid"])
    o = layer.o_proj(o.reshape(2, 12, 16))
    for leaf in tree_leaves(parents).tolist():
        path = tree_path(parents, leaf)
        assert_close(o[:, path], layer(hidden[:, path], state=dict(cache)), TOL_F64, f"path to leaf {leaf}")
