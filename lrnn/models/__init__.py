"""Models: the LM / token classifier, its config, cached and speculative generation, text generation and
checkpoint I/O."""

from lrnn.layers import Cache
from lrnn.models.config import ModelConfig
from lrnn.models.generation import SamplingConfig, SpecialTokens, generate, select_next
from lrnn.models.inference import (WEIGHT_FORMATS, InferenceLinear, compile_for_decoding, decode_weight_bytes,
                                   is_prepared, prepare_for_inference)
from lrnn.models.lm import LanguageModel, TreeStates
from lrnn.models.speculative import (Draft, Drafter, ModelDrafter, PromptLookupDrafter, SpeculativeStats,
                                     speculative_generate, verify_draft)
from lrnn.models.text import GenerationStats, generate_text
from lrnn.models.tree_speculative import (ModelTreeDrafter, PromptLookupTreeDrafter, TreeDraft, TreeDrafter,
                                          static_tree, tree_speculative_generate)

__all__ = ["ModelConfig", "LanguageModel", "TreeStates", "Cache", "SamplingConfig", "SpecialTokens", "generate", "select_next",
           "GenerationStats", "generate_text", "speculative_generate", "verify_draft", "Draft", "Drafter",
           "PromptLookupDrafter", "ModelDrafter", "SpeculativeStats", "tree_speculative_generate", "TreeDraft",
           "TreeDrafter", "static_tree", "ModelTreeDrafter", "PromptLookupTreeDrafter", "WEIGHT_FORMATS", "InferenceLinear", "prepare_for_inference",
           "is_prepared", "decode_weight_bytes", "compile_for_decoding"]
