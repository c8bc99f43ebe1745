"""Interop with peer checkpoints: import, export and convert between lrnn and peer formats.

Formats (``FORMATS``):
    lrnn       lrnn's own ``config.json`` + ``model.safetensors`` (``LanguageModel.save_pretrained``).
    mamba_ssm  state-spaces/mamba ``MambaLMHeadModel`` (Mamba, Mamba-2): ``pytorch_model.bin`` or safetensors.
    hf         HF transformers: ``mamba`` / ``mamba2`` model types; DeltaNet-family models export to fla's
               HF-registered types (the same as ``fla``).
    fla        flash-linear-attention ``delta_net`` / ``gated_deltanet`` / ``gated_deltaproduct``.

``load(directory)`` detects the format from ``config.json``; every importer refuses, by name, an option
whose math lrnn cannot reproduce, and reports missing, unknown or mis-shaped tensors with the file and
key. Tensors keep their stored dtypes unless a ``dtype`` is asked for. Torch pickles are read with
``weights_only=True`` only. Files are written atomically. The code lives in ``checkpoints`` (load /
save / convert), ``common`` (shared file reading, key mapping and option checks) and one module per format.
"""

from lrnn.models.interop.checkpoints import (FORMATS, Loaded, check_destination, check_exportable, convert, detect_format,
                                        load, load_model, prepare_conversion, save_model, write_model)

__all__ = ["FORMATS", "Loaded", "detect_format", "load", "load_model", "save_model", "write_model", "convert",
           "prepare_conversion", "check_destination", "check_exportable"]
