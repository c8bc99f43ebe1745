"""Mamba's ``token_dynamics`` option (refinement 1 of arXiv 2410.03292, ``lrnn.layers.token_dynamics``).

The parametrisation gives ``sym(S_C^T S_B)`` the claimed signs; the layer is exactly a plain Mamba whose
``x_proj`` holds the computed weight (outputs and gradients, every scan mode, packed documents, the decode
step, both eigenvalue ranges); it compiles; peer exports write that plain weight and reproduce the outputs;
bad values raise.
"""

from __future__ import annotations

import math

import pytest
import torch

from lrnn.analysis import interaction_matrix, spectrum, token_system
from lrnn.layers import Mamba
from lrnn.layers.token_dynamics import SCALE_OFFSET, TOKEN_DYNAMICS, SignedXProj, state_signs
from lrnn.models import LanguageModel, ModelConfig
from lrnn.models.interop import load, save_model

from layer_testkit import F32, F64, TOL, assert_close, random_hidden

D_MODEL, D_STATE, CHUNK = 16, 4, 8


def signed_mamba(token_dynamics: str, negative: bool = False, dtype=F64, seed: int = 0, d_state: int = D_STATE,
                 d_model: int = D_MODEL) -> Mamba:
    """A token_dynamics Mamba with random (not initial) P and D, so every entry of the weight is exercised."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layer = Mamba(d_model, d_state=d_state, chunk_size=CHUNK, negative_eigenvalues=negative,
                      token_dynamics=token_dynamics)
        with torch.no_grad():
            layer.x_proj.upper.normal_(0, 0.5)
            layer.x_proj.scale.normal_(0, 1)
    return layer.to(dtype).eval()


def plain_twin(layer: Mamba) -> Mamba:
    """A plain Mamba with ``layer``'s tensors and its computed ``x_proj.weight`` in an ``nn.Linear``."""
    twin = Mamba(layer.d_model, d_state=layer.d_state, chunk_size=layer.chunk_size,
                 negative_eigenvalues=layer.negative_eigenvalues).to(layer.A_log.dtype).eval()
    shared = {k: v for k, v in layer.state_dict().items() if not k.startswith("x_proj.")}
    missing, unexpected = twin.load_state_dict(shared, strict=False)
    assert missing == ["x_proj.weight"] and not unexpected
    with torch.no_grad():
        twin.x_proj.weight.copy_(layer.x_proj.weight)
    return twin


# ---- the parametrisation ----------------------------------------------------------------------------
@pytest.mark.parametrize("d_state", [4, 5])
@pytest.mark.parametrize("token_dynamics", TOKEN_DYNAMICS)
def test_the_interaction_matrix_has_the_chosen_signs(token_dynamics, d_state):
    """S_C^T S_B = P^T D P: symmetric, rank N, with N positive / N negative / ceil(N/2) positive and floor(N/2)
    negative eigenvalues (lrnn.analysis.spectrum), read from the layer as the diagnosis reads it."""
    layer = signed_mamba(token_dynamics, d_state=d_state)
    matrix = interaction_matrix(token_system(layer))
    p = layer.x_proj.triangular().double()
    assert torch.equal(p.tril(-1), torch.zeros_like(p)) and torch.equal(p.diagonal(), torch.ones(d_state, dtype=F64))
    assert_close(matrix, p.T @ torch.diag(layer.x_proj.diagonal().double()) @ p, 1e-12, "M = P^T D P")
    assert_close(matrix, matrix.T, 1e-12, "M is symmetric")
    spec = spectrum(matrix)
    expected = {"positive": (d_state, 0), "negative": (0, d_state),
                "mixed": (math.ceil(d_state / 2), d_state // 2)}[token_dynamics]
    assert (spec.n_positive, spec.n_negative, spec.n_zero) == (*expected, layer.d_inner - d_state)
    assert spec.regime == {"positive": "divergent", "negative": "convergent", "mixed": "mixed"}[token_dynamics]
    assert (layer.x_proj.diagonal().abs() >= SCALE_OFFSET).all()  # no state can switch itself off


def test_the_weight_is_differentiable_and_the_signs_are_not_learned_or_stored():
    """Gradients reach dt_weight, the strictly upper part of ``upper`` (not its diagonal or lower part) and
    ``scale``; the signs are a buffer outside the state dict (they follow from the config)."""
    proj = SignedXProj(6, 2, 3, "mixed").double()
    u = torch.randn(5, 6, dtype=F64)
    proj(u).square().sum().backward()
    assert proj.dt_weight.grad.abs().min() > 0 and proj.scale.grad.abs().min() > 0
    upper = proj.upper.grad
    assert torch.equal(upper.tril(), torch.zeros_like(upper)) and upper.triu(1).abs().sum() > 0
    assert sorted(proj.state_dict()) == ["dt_weight", "scale", "upper"]
    assert state_signs("mixed", 3).tolist() == [1.0, 1.0, -1.0]


# ---- the layer is a plain Mamba with the computed weight -------------------------------------------
def packed_starts(batch: int, time: int) -> torch.Tensor:
    starts = torch.zeros(batch, time, dtype=torch.bool)
    starts[:, 0] = True
    starts[0, 7] = starts[1, 12] = True
    return starts


@pytest.mark.parametrize("packed", [False, True], ids=["one-doc", "packed"])
@pytest.mark.parametrize("mode", [None, "chunk"], ids=["scan", "chunk"])
@pytest.mark.parametrize("negative", [False, True], ids=["pos", "neg"])
@pytest.mark.parametrize("token_dynamics", TOKEN_DYNAMICS)
def test_outputs_and_gradients_equal_a_plain_mamba_with_the_computed_weight(token_dynamics, negative, mode, packed):
    """float64, 1e-10: the outputs, the input gradient and every shared parameter's gradient equal the twin's;
    the gradients of P, D and the dt rows are the twin's x_proj.weight gradient pulled back through ``weight``."""
    layer = signed_mamba(token_dynamics, negative)
    twin = plain_twin(layer)
    x = random_hidden(2, 19, F64, seed=3).requires_grad_(True)
    x_twin = x.detach().clone().requires_grad_(True)
    starts = packed_starts(2, 19) if packed else None
    y, y_twin = layer(x, mode=mode, seq_starts=starts), twin(x_twin, mode=mode, seq_starts=starts)
    assert_close(y, y_twin, TOL[F64], "outputs")
    cotangent = random_hidden(2, 19, F64, seed=4)
    y.backward(cotangent)
    y_twin.backward(cotangent)
    assert_close(x.grad, x_twin.grad, TOL[F64], "input gradient")
    twin_grads = dict(twin.named_parameters())
    for name, p in layer.named_parameters():
        if not name.startswith("x_proj."):
            assert_close(p.grad, twin_grads[name].grad, TOL[F64], f"grad {name}")
    params = list(layer.x_proj.parameters())
    pulled_back = torch.autograd.grad(layer.x_proj.weight, params, twin.x_proj.weight.grad)
    for (name, p), expected in zip(layer.x_proj.named_parameters(), pulled_back):
        assert_close(p.grad, expected, TOL[F64], f"grad x_proj.{name}")


@torch.no_grad()
@pytest.mark.parametrize("negative", [False, True], ids=["pos", "neg"])
@pytest.mark.parametrize("token_dynamics", TOKEN_DYNAMICS)
def test_decode_steps_equal_the_full_forward(token_dynamics, negative):
    """A 9-token prefill into a state, then tokens 9..12 one at a time (the step path), equal the full forward."""
    layer = signed_mamba(token_dynamics, negative)
    x = random_hidden(2, 13, F64, seed=5)
    full = layer(x)
    state: dict = {}
    outputs = [layer(x[:, :9], state)]
    outputs += [layer(x[:, i:i + 1], state) for i in range(9, 13)]
    assert_close(torch.cat(outputs, dim=1), full, TOL[F64], "prefill + decode steps vs full forward")


@torch.no_grad()
def test_compiles_without_graph_breaks():
    """``torch.compile(fullgraph=True)`` traces the layer (x_proj's weight is built inside the graph); the
    dynamo-only backend keeps the test fast, the numbers are eager's."""
    torch._dynamo.reset()
    layer = signed_mamba("positive", negative=True, dtype=F32)
    x = random_hidden(2, 11, F32, seed=6)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    assert_close(compiled(x, mode="chunk"), layer(x, mode="chunk"), TOL[F32], "compiled vs eager")


# ---- export ------------------------------------------------------------------------------------------
def signed_model(token_dynamics: str) -> LanguageModel:
    config = ModelConfig(vocab_size=37, d_model=D_MODEL, n_layers=2, mixer="mamba",
                         mixer_kwargs={"mamba": {"d_state": D_STATE, "dt_rank": 3, "token_dynamics": token_dynamics}})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LanguageModel(config)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("x_proj.upper", "x_proj.scale")):
                    p.normal_(0, 0.5)
    return model.eval()


@torch.no_grad()
@pytest.mark.parametrize("fmt", ["mamba_ssm", "hf", "lrnn"])
@pytest.mark.parametrize("token_dynamics", ["positive", "mixed"])
def test_export_round_trip_reproduces_the_outputs(tmp_path, token_dynamics, fmt):
    """The peers get a plain Mamba with the computed x_proj.weight (and no trace of the parametrisation);
    lrnn's own format keeps the option. Reloaded, every model gives the same logits."""
    model = signed_model(token_dynamics)
    ids = torch.randint(0, 37, (2, 15), generator=torch.Generator().manual_seed(7))
    save_model(model, tmp_path / fmt, fmt)
    loaded = load(tmp_path / fmt).model
    assert_close(loaded(ids)[..., :37], model(ids)[..., :37], 1e-6, f"{fmt} round trip")
    kept = loaded.config.mixer_kwargs["mamba"].get("token_dynamics")
    assert kept == (token_dynamics if fmt == "lrnn" else None)
    for i, block in enumerate(loaded.layers):
        assert type(block.mixer.x_proj) is (SignedXProj if fmt == "lrnn" else torch.nn.Linear)
        assert torch.equal(block.mixer.x_proj.weight, model.layers[i].mixer.x_proj.weight)


# ---- bad values ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value,error,match", [
    ("pos", ValueError, r"token_dynamics must be None or one of .*'pos'"),
    ("Positive", ValueError, r"token_dynamics must be None or one of .*'Positive'"),
    (1, TypeError, r"token_dynamics must be None or a str .*got 1"),
    (True, TypeError, r"token_dynamics must be None or a str .*got True"),
])
def test_bad_token_dynamics_values_raise(value, error, match):
    with pytest.raises(error, match=match):
        Mamba(D_MODEL, d_state=D_STATE, token_dynamics=value)
    with pytest.raises(error, match=match):  # through a model config too
        LanguageModel(ModelConfig(vocab_size=11, d_model=D_MODEL, n_layers=1, mixer="mamba",
                                  mixer_kwargs={"mamba": {"token_dynamics": value}}))


def test_more_states_than_channels_is_refused():
    """P is unit upper-triangular [d_state, d_inner]: it needs d_state <= d_inner."""
    with pytest.raises(ValueError, match=r"d_state <= d_inner .*d_state = 20, d_inner = 16"):
        Mamba(8, d_state=20, token_dynamics="positive")


def test_signed_x_proj_refuses_none_instead_of_falling_back_to_mixed():
    with pytest.raises(ValueError, match="None means"):
        SignedXProj(8, 2, 4, None)
    with pytest.raises(ValueError, match="None means"):
        state_signs(None, 4)
