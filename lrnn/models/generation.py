"""Cached generation: prefill once, then O(1)-per-token recurrent steps (attention layers grow a KV cache)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lrnn.layers import Cache
from lrnn.validation import check_int

TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


@dataclass(frozen=True)
class SpecialTokens:
    """A model's special token ids, as peers' configs record them (HF: ``bos_token_id``, ``eos_token_id``,
    ``pad_token_id`` in ``config.json``). None = not recorded. ``eos_token_id`` may be a tuple of ids
    (HF allows several end-of-sequence tokens). They are metadata: no computation of the model uses them.
    """

    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        for key in TOKEN_ID_KEYS:
            value = getattr(self, key)
            if key == "eos_token_id" and isinstance(value, tuple):
                if not value:
                    raise ValueError(f"{key} must be an int >= 0, a non-empty tuple of them or None, got ()")
                for i, token in enumerate(value):
                    check_int(f"{key}[{i}]", token, 0)
            elif value is not None:
                check_int(key, value, 0)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> "SpecialTokens":
        """The token ids among ``data``'s keys (other keys are not read); a JSON list of eos ids becomes a
        tuple. A bad value raises a ValueError naming ``source`` (the file) and the key."""
        fields = {key: data.get(key) for key in TOKEN_ID_KEYS}
        if isinstance(fields["eos_token_id"], list):
            fields["eos_token_id"] = tuple(fields["eos_token_id"])
        try:
            return cls(**fields)
        except (TypeError, ValueError) as err:  # a bad value in a file: the file is named
            raise ValueError(f"{source}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """``{key: id}`` for all three keys (None written as null, so a round trip keeps "not recorded")."""
        values = {key: getattr(self, key) for key in TOKEN_ID_KEYS}
        return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}

    def is_empty(self) -> bool:
        return all(getattr(self, key) is None for key in TOKEN_ID_KEYS)


@dataclass
class SamplingConfig:
    """How the next token is chosen.

    ``do_sample=False`` is greedy decoding. Otherwise logits are divided by ``temperature``, restricted to
    the ``top_k`` most likely tokens (0: all) and to the smallest set whose probability reaches ``top_p``
    (1.0: all), then sampled.
    """

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    eos_token_id: int | None = None
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        check_int("max_new_tokens", self.max_new_tokens, 0)
        for name in ("pad_token_id", "eos_token_id"):
            if getattr(self, name) is not None:
                check_int(f"{name} (a token id)", getattr(self, name), 0)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        check_int("top_k (0: all)", self.top_k, 0)
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")


def select_next(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next tokens [B] from last-position logits [B, V]: the argmax, or a sample of ``sampling_probs``."""
    if not sampling.do_sample:
        return logits.argmax(dim=-1)
    return torch.multinomial(sampling_probs(logits, sampling), 1, generator=generator).squeeze(-1)


def sampling_probs(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """The distribution that sampling draws from, float32 [..., V] from logits [..., V]:
    ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens and to the smallest set
    whose probability reaches ``top_p`` (renormalised). Speculative sampling applies it to both models."""
    logits = logits.float() / sampling.temperature
    if sampling.top_k > 0:
        kth = torch.topk(logits, min(sampling.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens before it already reach top_p (the top token always stays).
        drop_sorted = (torch.cumsum(probs, dim=-1) - probs) >= sampling.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.softmax(logits, dim=-1)


def check_token_ids(sampling: SamplingConfig, vocab_size: int) -> None:
    """Raise a ValueError unless ``sampling``'s pad and eos ids lie in the model's vocabulary [0, vocab_size)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(sampling, name)
        if value is not None and not 0 <= value < vocab_size:
            raise ValueError(f"{name} must be a token id in [0, {vocab_size}), got {value}")


@torch.no_grad()
def generate(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             sampling: SamplingConfig | None = None, generator: torch.Generator | None = None,
             step_fn=None, eos_check_every: int = 8, on_token=None) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` after left-padded prompts.

    Args:
        model: a ``LanguageModel``.
        input_ids: [B, T] prompts, left-padded; attention_mask [B, T] (1 = token, 0 = padding) or None.
        sampling: a ``SamplingConfig`` (default: greedy, 32 tokens).
        step_fn: optional replacement for ``model(ids, cache=cache)`` on single-token steps (e.g. a
            ``torch.compile``d one); called as ``step_fn(ids [B, 1], cache)``, returns logits [B, 1, V].
        eos_check_every: check for all-finished rows every this many steps (each check syncs with the
            device, so it is not done every step).
        on_token: optional callback receiving each step's tokens [B] (streaming).

    Returns:
        [B, T + n] token ids (n <= max_new_tokens); rows that hit EOS are filled with ``pad_token_id``.
    """
    sampling = sampling or SamplingConfig()
    check_token_ids(sampling, model.config.vocab_size)
    cache: Cache = model.new_cache()
    # Only the last prompt position's logits are used: skip the head for the others ([T, vocab] matmul).
    logits = model(input_ids, cache=cache, attention_mask=attention_mask, logits_to_keep=1)[:, -1]
    step = step_fn or (lambda ids, c: model(ids, cache=c))
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    out = [input_ids]
    for i in range(sampling.max_new_tokens):
        token = select_next(logits, sampling, generator)
        if sampling.eos_token_id is not None:
            token = torch.where(finished, torch.full_like(token, sampling.pad_token_id), token)
            finished = finished | (token == sampling.eos_token_id)
        out.append(token[:, None])
        if on_token is not None:
            on_token(token)
        last = i + 1 == sampling.max_new_tokens
        if last or (sampling.eos_token_id is not None and (i + 1) % eos_check_every == 0 and bool(finished.all())):
            break
        logits = step(token[:, None], cache)[:, -1]
    return torch.cat(out, dim=1)
