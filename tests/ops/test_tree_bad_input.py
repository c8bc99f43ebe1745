"""Bad arguments to the tree ops raise ``ValueError`` (wrong shape or value) or ``TypeError`` (wrong type or
dtype) whose message names the offending argument.

Each case starts from a valid call and replaces one argument (``change`` maps a name to a value, or to a
function of the valid arguments that builds it).
"""

from __future__ import annotations

import re

import pytest
import torch

from lrnn.ops import (token_tree, tree_attention, tree_conv_state, tree_decay_recurrence, tree_decay_state,
                      tree_delta_rule, tree_delta_state, tree_path, tree_positions, tree_short_conv)

from ops_helpers import F32, decay_recurrence_inputs, delta_rule_inputs, generator, normal, short_conv_inputs

N = 5
PARENTS = torch.tensor([-1, 0, 0, 1, -1])
N_H = 2


def valid(op) -> dict:
    """Valid keyword arguments of each tree op (B = 2, N = 5 nodes)."""
    if op in (tree_decay_recurrence, tree_decay_state):
        args = decay_recurrence_inputs(B=2, T=N, H=2, K=4, V=3, seed=0, dtype=F32)
        extra = {"state_node": 3} if op is tree_decay_recurrence else {"node": 3}
    elif op in (tree_delta_rule, tree_delta_state):
        args = delta_rule_inputs(B=2, T=N, H=2, K=4, V=3, num_householder=N_H, seed=0, dtype=F32)
        extra = {"num_householder": N_H} | ({"state_node": 3} if op is tree_delta_rule else {"node": 3})
    elif op is tree_short_conv:
        args, extra = short_conv_inputs(B=2, T=N, D=5, W=4, seed=0, dtype=F32), {"state_node": 3}
    elif op is tree_conv_state:
        x = short_conv_inputs(B=2, T=N, D=5, W=4, seed=0, dtype=F32)
        args, extra = {"x": x["x"], "initial_state": x["initial_state"]}, {"node": 3, "width": 4}
    else:
        gen = generator(0)
        args = {name: normal((2, length, 2, 4), gen, F32)
                for name, length in (("q", N), ("k", N), ("v", N), ("past_k", 3), ("past_v", 3))}
        args["past_valid"], extra = torch.ones(2, 3, dtype=torch.bool), {}
    if op in (tree_decay_state, tree_delta_state):
        args.pop("q")
    return args | extra | {"parents": PARENTS}


def case(op, error: type[Exception], name: str, **change):
    label = f"{op.__name__}-" + "-".join(change) + f"-{error.__name__}"
    return pytest.param(op, error, name, change, id=label)


CASES = [
    # parents: type, dtype, shape, order, range, node count
    case(tree_decay_recurrence, TypeError, "parents", parents=[-1, 0, 1, 2, 3]),
    case(tree_decay_recurrence, TypeError, "parents", parents=PARENTS.float()),
    case(tree_decay_recurrence, TypeError, "parents", parents=PARENTS >= 0),
    case(tree_decay_recurrence, ValueError, "parents", parents=PARENTS[None]),
    case(tree_decay_recurrence, ValueError, "parents", parents=torch.tensor([-1, 0, 2, 1, -1])),
    case(tree_decay_recurrence, ValueError, "parents", parents=torch.tensor([-1, 0, 3, 1, -1])),
    case(tree_decay_recurrence, ValueError, "parents", parents=torch.tensor([-1, -2, 0, 1, -1])),
    case(tree_delta_rule, ValueError, "parents", parents=PARENTS[:4]),
    case(tree_short_conv, ValueError, "parents", parents=torch.tensor([-1, 0, 1, 2, 3, 4])),
    case(tree_attention, ValueError, "parents", parents=PARENTS[:3]),
    # the node whose state is asked for
    case(tree_decay_recurrence, ValueError, "node", state_node=N),
    case(tree_decay_recurrence, ValueError, "node", state_node=-2),
    case(tree_decay_recurrence, TypeError, "node", state_node=1.0),
    case(tree_delta_rule, ValueError, "node", state_node=torch.tensor([0, 1, 2])),
    case(tree_delta_rule, ValueError, "node", state_node=torch.tensor([0, N])),
    case(tree_decay_state, TypeError, "node", node=torch.tensor([0.0, 1.0])),
    case(tree_short_conv, ValueError, "node", state_node=torch.tensor([-3, 0])),
    case(tree_conv_state, TypeError, "node", node=True),
    # inputs of the ops (shapes and dtypes as in the sequence ops, with time = tree nodes)
    case(tree_decay_recurrence, ValueError, "k", k=lambda a: a["k"][:, :, :, :3]),
    case(tree_decay_recurrence, ValueError, "log_decay", log_decay=lambda a: a["log_decay"][:, :4]),
    case(tree_decay_recurrence, ValueError, "log_decay", log_decay=lambda a: a["log_decay"].abs()),
    case(tree_decay_state, ValueError, "v", v=lambda a: a["v"][:, :4]),
    case(tree_decay_state, TypeError, "k", k=lambda a: a["k"].long()),
    case(tree_delta_rule, ValueError, "k", k=lambda a: a["k"][:, :N]),
    case(tree_delta_rule, ValueError, "beta", beta=lambda a: a["beta"] + 2.5),
    case(tree_delta_rule, TypeError, "num_householder", num_householder=2.0),
    case(tree_delta_state, ValueError, "k", k=lambda a: a["k"][:, :N * N_H - 1]),
    case(tree_delta_state, ValueError, "num_householder", num_householder=0),
    case(tree_delta_state, ValueError, "initial_state", initial_state=lambda a: a["initial_state"][:, :1]),
    case(tree_short_conv, ValueError, "weight", weight=lambda a: a["weight"][:3]),
    case(tree_short_conv, ValueError, "activation", activation="relu"),
    case(tree_conv_state, ValueError, "width", width=0),
    case(tree_conv_state, TypeError, "width", width=4.0),
    case(tree_conv_state, ValueError, "initial_state", width=3),
    case(tree_decay_recurrence, ValueError, "mode", mode="chunked"),
    case(tree_delta_state, ValueError, "mode", mode="loop"),
    case(tree_attention, ValueError, "k", k=lambda a: a["k"][:, :, :1]),
    case(tree_attention, ValueError, "past_k", past_v=None),
    case(tree_attention, ValueError, "past_v", past_v=lambda a: a["past_v"][:, :2]),
    case(tree_attention, TypeError, "past_valid", past_valid=lambda a: a["past_valid"].long()),
    case(tree_attention, ValueError, "past_valid", past_valid=lambda a: a["past_valid"][:1]),
    case(tree_attention, TypeError, "scale", scale="0.5"),
]


@pytest.mark.parametrize("op,error,name,change", CASES)
def test_bad_argument(op, error, name, change):
    args = valid(op)
    op(**args)  # the unchanged call is valid
    for key, value in change.items():
        args[key] = value(args) if callable(value) else value
    with pytest.raises(error, match=rf"\b{re.escape(name)}\b"):
        op(**args)


def test_helpers_reject_bad_input():
    with pytest.raises(ValueError, match=r"parents\[2\] = 2"):
        token_tree(torch.tensor([-1, 0, 2]))
    with pytest.raises(ValueError, match="node"):
        tree_path(PARENTS, 5)
    with pytest.raises(ValueError, match="past_length"):
        tree_positions(PARENTS, -1)
    with pytest.raises(TypeError, match="past_length"):
        tree_positions(PARENTS, torch.tensor([1.0, 2.0]))
