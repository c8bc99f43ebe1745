"""Text generation: a prompt string in, the continuation streamed out as text pieces, with timing.

``generate_text`` encodes the prompt with a ``Tokenizer``, runs ``generation.generate`` (or another decode
loop: ``speculative.speculative_generate``) with a callback that decodes each new token as it arrives
(``StreamDecoder``: multi-byte characters split over tokens are held back until complete) and returns
``GenerationStats``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

import torch

from lrnn.models.generation import SamplingConfig, generate
from lrnn.models.lm import LanguageModel
from lrnn.models.tokenizer import Tokenizer


@dataclass
class GenerationStats:
    """Counts and times of one ``generate_text`` call."""

    prompt_tokens: int
    new_tokens: int
    prefill_s: float  # prompt in, first new token out (the whole call when no token was generated)
    decode_s: float  # first to last new token

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed: tokens after the first per second of decoding; None with fewer than 2 new tokens
        (no interval to time)."""
        return (self.new_tokens - 1) / self.decode_s if self.new_tokens > 1 and self.decode_s > 0 else None

    def summary(self) -> str:
        """One line such as ``64 new tokens after a 5-token prompt; prefill 0.31 s; decode 42.0 tokens/s``."""
        parts = [f"{self.new_tokens} new tokens after a {self.prompt_tokens}-token prompt",
                 f"prefill {self.prefill_s:.2f} s"]
        if self.tokens_per_s is not None:
            parts.append(f"decode {self.tokens_per_s:.1f} tokens/s")
        return "; ".join(parts)


def generate_text(model: LanguageModel, tokenizer: Tokenizer, prompt: str, sampling: SamplingConfig,
                  seed: int | None = None, write: Callable[[str], None] = print,
                  decode: Callable[..., torch.Tensor] | None = None) -> GenerationStats:
    """Continue ``prompt`` with ``model``, passing each completed piece of text to ``write`` as it arrives.

    Stops after ``sampling.max_new_tokens`` tokens (0: only the prompt is read) or at the EOS token: the
    tokenizer's, else the single ``eos_token_id`` the model's checkpoint recorded (``model.special_tokens``).
    ``decode`` is the generation loop, called as ``decode(model, ids [1, T], sampling=, generator=,
    on_token=)``: ``generate`` checking for EOS every step (default) or a ``functools.partial`` of
    ``speculative_generate``.
    """
    ids = encode_prompt(model, tokenizer, prompt)
    decode = decode or partial(generate, eos_check_every=1)  # stop right at EOS: no steps after it
    eos = _eos_token(model, tokenizer)
    sampling = replace(sampling, eos_token_id=eos)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    stream = tokenizer.stream()
    times: list[float] = []
    finished = False

    def on_token(token: torch.Tensor) -> None:
        nonlocal finished
        times.append(time.perf_counter())
        if finished:
            return
        value = int(token[0])
        if eos is not None and value == eos:
            finished = True
            return
        piece = stream.push(value)
        if piece:
            write(piece)

    start = time.perf_counter()
    with torch.no_grad():
        decode(model, torch.tensor([ids]), sampling=sampling, generator=generator, on_token=on_token)
    rest = stream.finish()
    if rest:
        write(rest)
    prefill = times[0] - start if times else time.perf_counter() - start
    return GenerationStats(prompt_tokens=len(ids), new_tokens=len(times), prefill_s=prefill,
                           decode_s=times[-1] - times[0] if len(times) > 1 else 0.0)


def encode_prompt(model: LanguageModel, tokenizer: Tokenizer, prompt: str) -> list[int]:
    """``prompt``'s token ids; a ValueError if it encodes to nothing or to ids beyond the model's vocabulary
    (a tokenizer that does not belong to the model)."""
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError(f"prompt must encode to at least one token, got an empty encoding for {prompt!r}")
    too_big = [i for i in ids if i >= model.config.vocab_size]
    if too_big:
        raise ValueError(f"the tokenizer ({tokenizer.path}) produced token ids up to {max(too_big)}, beyond the "
                         f"model's vocab_size {model.config.vocab_size}: they do not belong together")
    return ids


def _eos_token(model: LanguageModel, tokenizer: Tokenizer) -> int | None:
    """The EOS id to stop at: the tokenizer's, else the model's single recorded one; None (run to
    ``max_new_tokens``) when neither is known or the id lies beyond what the model can produce."""
    eos = tokenizer.eos_token_id
    if eos is None and isinstance(model.special_tokens.eos_token_id, int):
        eos = model.special_tokens.eos_token_id
    return eos if eos is not None and eos < model.config.vocab_size else None
