"""Token mixers (nn.Modules) built on lrnn.ops, and their registry.

Every mixer maps ``hidden [B, T, d_model] -> [B, T, d_model]`` with ``forward(hidden, state=None,
mask=None, mode=None, seq_starts=None)``: ``state`` is the layer's entry of a ``Cache`` (read, then updated
in place), ``mask`` [B, T] marks real tokens (False = left padding, treated as an identity step),
``seq_starts`` [B, T] marks the first token of each packed document (no state, conv window or attention
crosses it; checked by ``lrnn.layers.common.document_starts``), ``mode`` forces
``"chunk"`` or ``"recurrent"`` (default: ``lrnn.layers.common.scan_mode``'s one rule -- the O(1) step op
for a single token after a cached state, else the chunked scan). The recurrent mixers take
``negative_eigenvalues`` (False: the original [0, 1] range; True: [-1, 1]).

Each mixer module registers one ``MixerSpec`` (``lrnn.layers.registry``); ``MIXERS`` maps names to specs.
Every module of this package is imported below, so a new mixer module is registered without edits here.
"""

import importlib
import pkgutil

# Import order = registration order = the order of tables and help: baselines, LTI, Mamba, delta rule.
from lrnn.layers.baselines import LSTM, Attention  # noqa: I001
from lrnn.layers.s4d import S4D, s4d_param_groups
from lrnn.layers.mamba import Mamba, Mamba2
from lrnn.layers.deltanet import DeltaNet, DeltaProduct, GatedDeltaNet
from lrnn.layers.cache import Cache
from lrnn.layers.common import AcceptedPath, GatedRMSNorm, RMSNorm, ShortConv, TreeKeep, accepted_path
from lrnn.layers.registry import (GENERIC_FIELDS, MIXERS, MixerSpec, Variant, build_mixer, label_order, mixer_spec,
                                  mixers_with_switch, register)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

RECURRENT_MIXERS = mixers_with_switch()
"""Mixers with a linear recurrence, i.e. an eigenvalue range to switch (S4D is LTI: no switch)."""

__all__ = ["MIXERS", "RECURRENT_MIXERS", "GENERIC_FIELDS", "MixerSpec", "Variant", "register", "mixer_spec",
           "build_mixer", "label_order", "mixers_with_switch", "Cache", "Mamba", "Mamba2", "DeltaNet", "GatedDeltaNet",
           "DeltaProduct", "Attention", "LSTM", "S4D", "s4d_param_groups", "RMSNorm", "GatedRMSNorm", "ShortConv",
           "TreeKeep", "AcceptedPath", "accepted_path"]
