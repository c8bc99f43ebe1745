"""Token mixers (nn.Modules) built on lrnn.ops.

Every mixer maps ``hidden [B, T, d_model] -> [B, T, d_model]`` with ``forward(hidden, state=None,
mask=None, mode=None)``: ``state`` is the layer's entry of a ``Cache`` (read, then updated in place),
``mask`` [B, T] marks real tokens (False = left padding, treated as an identity step), ``mode`` forces
``"chunk"`` or ``"recurrent"`` (default: recurrent for single-token steps with a state). The recurrent
mixers take ``negative_eigenvalues`` (False: the original [0, 1] range; True: [-1, 1]).
"""

from lrnn.layers.baselines import LSTM, Attention
from lrnn.layers.cache import Cache
from lrnn.layers.common import GatedRMSNorm, RMSNorm, ShortConv
from lrnn.layers.deltanet import DeltaNet, DeltaProduct, GatedDeltaNet
from lrnn.layers.mamba import Mamba, Mamba2
from lrnn.layers.s4d import S4D, s4d_param_groups

MIXERS = {
    "mamba": Mamba,
    "mamba2": Mamba2,
    "deltanet": DeltaNet,
    "gated_deltanet": GatedDeltaNet,
    "deltaproduct": DeltaProduct,
    "attention": Attention,
    "lstm": LSTM,
    "s4d": S4D,  # LTI: no eigenvalue switch, so not in RECURRENT_MIXERS
}
"""Mixer names accepted by model configs."""

RECURRENT_MIXERS = ("mamba", "mamba2", "deltanet", "gated_deltanet", "deltaproduct")
"""Mixers with a linear recurrence, i.e. an eigenvalue range to switch."""

__all__ = ["MIXERS", "RECURRENT_MIXERS", "Cache", "Mamba", "Mamba2", "DeltaNet", "GatedDeltaNet",
           "DeltaProduct", "Attention", "LSTM", "S4D", "s4d_param_groups", "RMSNorm", "GatedRMSNorm", "ShortConv"]
