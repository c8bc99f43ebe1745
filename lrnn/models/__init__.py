"""Models: the LM / token classifier, its config, cached generation and checkpoint I/O."""

from lrnn.layers import Cache
from lrnn.models.config import ModelConfig
from lrnn.models.generation import SamplingConfig, generate, select_next
from lrnn.models.lm import LanguageModel

__all__ = ["ModelConfig", "LanguageModel", "Cache", "SamplingConfig", "generate", "select_next"]
