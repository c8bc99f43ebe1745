"""Text in and out: a local ``tokenizer.json`` (HF ``tokenizers``) and streaming decode.

No network access: the tokenizer is read from a directory (usually the model's). Generating text with
it is ``lrnn.models.text.generate_text``.
"""

from __future__ import annotations

import json
from pathlib import Path

TOKENIZER_NAME = "tokenizer.json"
_REPLACEMENT = "\ufffd"  # what a decoder emits for an incomplete UTF-8 sequence


class Tokenizer:
    """A ``tokenizers.Tokenizer`` read from ``directory/tokenizer.json``.

    ``eos_token_id`` comes from ``tokenizer_config.json`` / ``special_tokens_map.json`` (``eos_token``) or
    ``config.json`` (``eos_token_id``), when present.
    """

    def __init__(self, directory: str | Path) -> None:
        try:
            from tokenizers import Tokenizer as _HFTokenizer
        except ImportError:  # pragma: no cover - it is a dependency
            raise ImportError("the 'tokenizers' package is needed to read tokenizer.json: "
                              "pip install tokenizers") from None
        directory = Path(directory)
        path = directory / TOKENIZER_NAME
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path} (lrnn reads a local tokenizer.json; "
                                    "pass --tokenizer DIR if it lives elsewhere)")
        try:
            self._tok = _HFTokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises its own Exception subclass for bad files
            raise ValueError(f"cannot read tokenizer from {path}: {err}") from None
        self.path = path
        self.eos_token_id = self._find_eos(directory)

    def _find_eos(self, directory: Path) -> int | None:
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            eos = _json_field(directory / name, "eos_token")
            if isinstance(eos, dict):
                eos = eos.get("content")
            if isinstance(eos, str) and self._tok.token_to_id(eos) is not None:
                return self._tok.token_to_id(eos)
        eos = _json_field(directory / "config.json", "eos_token_id")
        return eos if isinstance(eos, int) and not isinstance(eos, bool) and eos >= 0 else None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def stream(self) -> "StreamDecoder":
        return StreamDecoder(self)


def _json_field(path: Path, key: str):
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data.get(key) if isinstance(data, dict) else None


class StreamDecoder:
    """Turns a token stream into text pieces whose concatenation is ``decode(all tokens)``.

    Each step decodes a short window ``ids[start:]`` and emits what it adds beyond ``ids[start:read]``;
    a piece ending in an incomplete UTF-8 sequence (U+FFFD) is held back until the next token completes it.
    Decoding a window (not a single token) keeps word-boundary rules (spaces, byte fallback) right.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._start = 0  # window start
        self._read = 0  # tokens whose text has been emitted

    def push(self, token: int) -> str:
        """Add one token; return the new text it completes (possibly "")."""
        self._ids.append(int(token))
        prefix = self._tokenizer.decode(self._ids[self._start:self._read])
        text = self._tokenizer.decode(self._ids[self._start:])
        if len(text) <= len(prefix) or text.endswith(_REPLACEMENT):
            return ""
        self._start, self._read = self._read, len(self._ids)
        return text[len(prefix):]

    def finish(self) -> str:
        """The text still held back (an incomplete UTF-8 tail at the end of the stream)."""
        prefix = self._tokenizer.decode(self._ids[self._start:self._read])
        text = self._tokenizer.decode(self._ids[self._start:])
        self._start = self._read = len(self._ids)
        return text[len(prefix):]
