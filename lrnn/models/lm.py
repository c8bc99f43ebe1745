"""The causal LM / token classifier built from any mixers, with cached continuation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lrnn.layers import Cache, RMSNorm, TreeKeep, accepted_path, build_mixer
from lrnn.models.config import ModelConfig
from lrnn.ops import TokenTree, check_seq_starts, token_tree, tree_path
from lrnn.models.generation import SpecialTokens
from lrnn.models.inference import is_prepared
from lrnn.models.io import (CONFIG_NAME, WEIGHTS_NAME, cast_tensors_, load_special_tokens, load_weights,
                            save_special_tokens, save_weights)
from lrnn.validation import check_int


class GatedMLP(nn.Module):
    """``fc2(y * silu(gate))`` with ``[y, gate] = fc1(x)`` (mamba_ssm's GatedMLP)."""

    def __init__(self, d_model: int, d_intermediate: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, 2 * d_intermediate, bias=False)
        self.fc2 = nn.Linear(d_intermediate, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(y * F.silu(gate))


class Block(nn.Module):
    """Pre-norm residual block: ``x + mixer(norm(x))``, then ``x + mlp(norm2(x))`` if there is an MLP."""

    def __init__(self, config: ModelConfig, mixer_name: str) -> None:
        super().__init__()
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.mixer = build_mixer(mixer_name, config.d_model, **config.mixer_arguments(mixer_name))
        if config.d_intermediate > 0:
            self.norm2 = RMSNorm(config.d_model, config.norm_eps)
            self.mlp = GatedMLP(config.d_model, config.d_intermediate)
        else:
            self.norm2 = self.mlp = None

    def forward(self, x: torch.Tensor, state: dict | None, mask: torch.Tensor | None,
                seq_starts: torch.Tensor | None = None) -> torch.Tensor:
        packed = {} if seq_starts is None else {"seq_starts": seq_starts}  # mixers without seq_starts serve unpacked input only
        x = x + self.mixer(self.norm(x), state, mask, **packed)
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x

    def forward_tree(self, x: torch.Tensor, state: dict | None, tree: TokenTree,
                     keep: TreeKeep | None = None) -> torch.Tensor:
        """``forward`` over the N nodes of a token tree (x [B, N, d_model]): the mixer's tree path; the
        norms and the MLP are per token. ``state`` is read, not changed; ``keep`` (a dict or None) is the
        mixer's, filled with what its ``commit_tree`` needs."""
        x = x + self.mixer.forward_tree(self.norm(x), state, tree, keep)
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x


@dataclass(frozen=True)
class TreeStates:
    """What ``LanguageModel.forward_tree(..., keep_states=True)`` kept to commit any node of the tree without
    recomputing its path: per layer, the mixer's per-node op inputs (or per-node states) in a dict that only
    that mixer's ``commit_tree`` reads.

    Attributes:
        tree: the verified ``TokenTree``. cache_length: ``cache.length`` at verification (a commit checks
            that the cache has not moved since). layers: one kept dict per layer.
    """

    tree: TokenTree
    cache_length: int
    layers: tuple[TreeKeep, ...]


class LanguageModel(nn.Module):
    """Embedding -> blocks -> norm -> LM head (or token-classification head when ``num_labels`` is set).

    ``forward(input_ids [B, T], cache=None, attention_mask=None, logits_to_keep=0) -> logits [B, T, vocab or
    labels]``. With a ``Cache`` the model continues from, and updates, the cached states; ``attention_mask``
    [B, T] (1 = token, 0 = left padding) makes padded positions identity steps. ``logits_to_keep=n >= 1``
    computes the final norm and head for the last ``n`` positions only (logits [B, n, ...]; generation's
    prefill needs just the last one); 0 (the default) keeps all ``T``, as in HF transformers.

    Packed documents: ``seq_starts`` [B, T] (bool, True at the first token of each document in a row;
    the row start is a boundary either way) keeps every document to itself -- recurrent states reset,
    short convs and attention do not reach across a start, attention positions restart -- so the logits
    equal those of each document run alone. Not combined with ``attention_mask``. With a ``Cache``, a
    call continues the cached sequence unless its first token is flagged, and leaves the state of the
    row's last document.

    ``special_tokens`` holds the bos / eos / pad ids a checkpoint recorded (metadata: not used by
    ``forward``); ``save_pretrained`` / ``from_pretrained`` and the interop formats carry it.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        self.config = config
        self.special_tokens = SpecialTokens()
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config, name) for name in config.layer_mixers())
        self.norm_f = RMSNorm(config.d_model, config.norm_eps)
        if config.num_labels is not None:
            self.head = nn.Linear(config.d_model, config.num_labels, bias=True)
        else:
            self.head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
            if config.tie_embeddings:
                self.head.weight = self.embedding.weight
        nn.init.normal_(self.embedding.weight, std=0.02)

    def new_cache(self) -> Cache:
        return Cache(len(self.layers))

    @property
    def tree_pass_per_node(self) -> bool:
        """Whether some layer's ``forward_tree`` runs one forward per node (a mixer without a tree form, on the
        ``forward_tree_by_paths`` fallback, marks itself ``tree_pass_per_node = True``; no built-in mixer does):
        then a tree pass costs a forward per node."""
        return any(getattr(layer.mixer, "tree_pass_per_node", False) for layer in self.layers)

    @property
    def per_row_commit(self) -> bool:
        """Whether rows of a batch may commit different nodes of a verified tree (``commit_tree_path`` with one
        node per row), i.e. advance by paths of different lengths. Every layer must allow it: a cache entry
        that keeps its size as tokens are added (recurrent states, conv windows) takes each row's entries
        from that row's own commit; a mixer whose cache grows with the tokens (attention's KV cache,
        ``fixed_size_cache = False``) needs a ``commit_tree_rows`` that grows every row alike (attention
        marks the slots a shorter path leaves empty as invalid)."""
        return all(getattr(layer.mixer, "fixed_size_cache", True) or hasattr(layer.mixer, "commit_tree_rows")
                   for layer in self.layers)

    def forward(self, input_ids: torch.Tensor, cache: Cache | None = None,
                attention_mask: torch.Tensor | None = None, logits_to_keep: int = 0,
                seq_starts: torch.Tensor | None = None) -> torch.Tensor:
        self._check_inputs(input_ids, cache, attention_mask, logits_to_keep, seq_starts)
        mask = None if attention_mask is None else attention_mask.bool()
        x = self.embedding(input_ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, None if cache is None else cache.layers[i], mask, seq_starts)
        if cache is not None:
            cache.length += input_ids.shape[1]
        if logits_to_keep:
            x = x[:, -logits_to_keep:]  # the norm and head are per position: the kept rows are unchanged
        return self._head(self.norm_f(x))

    def forward_tree(self, tree_ids: torch.Tensor, cache: Cache | None, parents: torch.Tensor | TokenTree,
                     keep_states: bool = False) -> torch.Tensor | tuple[torch.Tensor, TreeStates]:
        """Verify a token tree in one pass: logits [B, N, vocab] where node m's row equals the last logits of
        ``forward(path_m, cache)`` for m's root-to-node path ``path_m`` (``tree_path``), run from the
        cached state. ``tree_ids`` [B, N]: the nodes' tokens in topological order; ``parents`` [N] (-1:
        follows the cache) or a ``TokenTree`` (built once here otherwise and shared by every layer). The
        cache is read, not changed: commit an accepted node with ``commit_tree_path``.

        ``keep_states=True`` (needs a cache) returns ``(logits, TreeStates)``: every mixer keeps what it
        needs to produce its state after any node (its per-node op inputs, or per-node states), so that
        ``commit_tree_path(..., states=...)`` commits by selection, without a second forward."""
        self._check_inputs(tree_ids, cache, None, 0)
        if keep_states and cache is None:
            raise ValueError("keep_states=True needs a cache: the kept states are committed into it")
        tree = _tree_of(parents, tree_ids)
        kept = [{} if keep_states else None for _ in self.layers]
        x = self.embedding(tree_ids)
        for i, layer in enumerate(self.layers):
            x = layer.forward_tree(x, None if cache is None else cache.layers[i], tree, kept[i])
        logits = self._head(self.norm_f(x))
        return (logits, TreeStates(tree, cache.length, tuple(kept))) if keep_states else logits

    def commit_tree_path(self, tree_ids: torch.Tensor, cache: Cache, parents: torch.Tensor | TokenTree,
                         node: int | torch.Tensor, states: TreeStates | None = None) -> None:
        """Advance ``cache`` by the root-to-``node`` path of a tree verified by ``forward_tree`` (``node`` =
        -1: nothing), so that it holds exactly what decoding the path's tokens would leave.

        ``node`` may be one node per row (a LongTensor [B], -1 for a row that commits nothing), with
        ``states``: each row then advances by its own path (``per_row_commit`` models: every built-in mixer;
        a KV cache grows by the longest path in every row, with the slots a shorter path leaves empty
        marked invalid). ``cache.length`` grows by the longest of those paths.

        ``states=None``: by **recomputation**, one ordinary cached forward over the path's tokens (the
        reference). ``states`` (from ``forward_tree(..., keep_states=True)`` on this cache and tree): by
        **selection**, no projection, MLP or head recomputed: each mixer's ``commit_tree`` writes its state
        after ``node`` from what the tree pass kept -- the short convs' windows along the path, the
        recurrent states after the path (the decode steps ``decay_step`` / ``delta_step`` over the path's
        kept k, v, decays and betas), attention's KV cache grown by the path's keys and values, the
        LSTM's (h, c) at the node from its level-by-level pass, S4D's state from its kept powers.
        """
        if not isinstance(cache, Cache):
            raise TypeError(f"cache must be a Cache (model.new_cache()), got {type(cache).__name__}")
        tree = _tree_of(parents, tree_ids)
        if isinstance(node, torch.Tensor):
            self._commit_per_row(tree_ids, cache, tree, node, states)
            return
        check_int("node (-1: the root, nothing to commit)", node, -1, tree.num_nodes - 1)
        if states is None:
            path = tree_path(tree, node)
            if path.numel():
                self(tree_ids[:, path], cache=cache, logits_to_keep=1)
            return
        self._check_tree_states(states, tree, cache)
        if node == -1:
            return
        accepted = accepted_path(tree, node)
        for layer, state, kept in zip(self.layers, cache.layers, states.layers):
            layer.mixer.commit_tree(state, kept, accepted)
        cache.length += len(accepted.path)

    def _commit_per_row(self, tree_ids: torch.Tensor, cache: Cache, tree: TokenTree, nodes: torch.Tensor,
                        states: TreeStates | None) -> None:
        """``commit_tree_path`` with one node per row. A mixer whose cache keeps its size: each distinct node
        is committed for the whole batch into a copy of the cache entry (the mixers' ``commit_tree`` replace
        entries, they do not write into them), and each row takes the entries of its own node's copy. A
        mixer whose cache grows (attention): its ``commit_tree_rows`` grows each row by its own path."""
        batch = tree_ids.shape[0]
        if nodes.dtype in (torch.bool, torch.uint8) or nodes.is_floating_point() or nodes.is_complex() \
                or tuple(nodes.shape) != (batch,):
            raise ValueError(f"node must be an int or an integer tensor [batch] = [{batch}] (one node per row), got "
                             f"a {nodes.dtype} tensor of shape {tuple(nodes.shape)}")
        if len(nodes) and not (-1 <= int(nodes.min()) and int(nodes.max()) < tree.num_nodes):
            raise ValueError(f"node must lie in [-1, {tree.num_nodes - 1}] (-1: nothing to commit), got values in "
                             f"[{int(nodes.min())}, {int(nodes.max())}]")
        distinct = torch.unique(nodes).tolist()
        if len(distinct) == 1:  # every row commits the same node: the plain commit
            self.commit_tree_path(tree_ids, cache, tree, distinct[0], states)
            return
        if not self.per_row_commit:
            raise ValueError("rows can commit different nodes only when every layer allows it (a mixer whose cache "
                             "grows with the tokens needs a commit_tree_rows method): commit one node for every row")
        if states is None:
            raise ValueError("one node per row needs the states kept by forward_tree(..., keep_states=True) "
                             "(a recomputing commit would run paths of different lengths)")
        self._check_tree_states(states, tree, cache)
        rows = nodes.to(tree_ids.device)
        for layer, entry, kept in zip(self.layers, cache.layers, states.layers):
            if getattr(layer.mixer, "fixed_size_cache", True):
                _merge_row_commits(layer.mixer, entry, kept, tree, rows, distinct)
            else:
                layer.mixer.commit_tree_rows(entry, kept, tree, rows)
        depths = torch.where(rows >= 0, tree.depths.to(rows.device)[rows.clamp(min=0)] + 1, 0)
        cache.length += int(depths.max())  # the longest row's path

    def _check_tree_states(self, states: TreeStates, tree: TokenTree, cache: Cache) -> None:
        """Raise unless ``states`` were kept by ``forward_tree`` on ``tree`` with ``cache`` as it is now."""
        if not isinstance(states, TreeStates):
            raise TypeError(f"states must be the TreeStates of forward_tree(..., keep_states=True), "
                            f"got {type(states).__name__}")
        if len(states.layers) != len(self.layers) or len(cache) != len(self.layers):
            raise ValueError(f"states and cache must come from this model's {len(self.layers)} layers, got "
                             f"{len(states.layers)} kept layers and a cache of {len(cache)}")
        if not torch.equal(states.tree.parents.to(tree.parents.device), tree.parents):
            raise ValueError(f"states were kept for another tree (parents {states.tree.parents.tolist()}, "
                             f"committing on parents {tree.parents.tolist()})")
        if states.cache_length != cache.length:
            raise ValueError(f"the cache has moved since the tree pass (length {cache.length}, "
                             f"{states.cache_length} when the states were kept): commit once, right after "
                             f"forward_tree")

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of normalised hidden states: the head, without the vocabulary padding columns."""
        logits = self.head(x)
        if self.config.num_labels is None and self.config.padded_vocab_size != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]
        return logits

    def _check_inputs(self, input_ids, cache, attention_mask, logits_to_keep, seq_starts=None) -> None:
        if torch.compiler.is_compiling():
            return
        check_int("logits_to_keep (0 = every position)", logits_to_keep, 0)
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.dtype not in (torch.long, torch.int32):
            got = f"{input_ids.dtype} tensor of shape {tuple(input_ids.shape)}" if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise TypeError(f"input_ids must be an integer tensor [batch, time], got {got}")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            raise ValueError(f"input_ids must lie in [0, {self.config.vocab_size}), got values in "
                             f"[{int(input_ids.min())}, {int(input_ids.max())}]")
        if cache is not None and (not isinstance(cache, Cache) or len(cache) != len(self.layers)):
            raise ValueError(f"cache must be a Cache with {len(self.layers)} layers (model.new_cache())")
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(attention_mask.shape)}")
        if seq_starts is not None:
            check_seq_starts(seq_starts, *input_ids.shape, input_ids)
            if attention_mask is not None:
                raise ValueError("seq_starts (packed documents) and attention_mask (padding) cannot be combined: "
                                 "pass one of them")

    # ---- checkpoints -------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint stores: ``state_dict()`` without a tied head (stored once, as the embedding)."""
        if is_prepared(self):
            raise ValueError("this model was converted by prepare_for_inference (inference-only weights): save the "
                             "original model instead")
        state = self.state_dict()
        if self.config.tie_embeddings and self.config.num_labels is None:
            state.pop("head.weight", None)
        return state

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (each atomically), and the special
        token ids, if any are recorded, into ``generation_config.json``. Tensors keep their dtypes."""
        directory = Path(directory)
        save_weights(self.checkpoint_state(), directory / WEIGHTS_NAME)
        save_special_tokens(directory, self.special_tokens)
        self.config.save(directory / CONFIG_NAME)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> "LanguageModel":
        """Load a directory written by ``save_pretrained``.

        Every tensor keeps the dtype it was saved in (a float64 checkpoint loads as float64, bit for bit),
        unless ``dtype`` (a floating-point ``torch.dtype``, as HF's ``from_pretrained(dtype=...)``) asks for
        another: then the floating-point tensors are converted to it. Missing, unexpected or mis-shaped
        tensors raise an error that names the file and the keys.
        """
        check_float_dtype("dtype", dtype)
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"model directory not found: {directory}")
        config = ModelConfig.load(directory / CONFIG_NAME)
        model = cls(config)
        weights_path = directory / WEIGHTS_NAME
        state = load_weights(weights_path)
        expected = model.checkpoint_state()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"{weights_path} does not match {directory / CONFIG_NAME}: "
                             f"missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                             f"unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}")
        for name, tensor in state.items():
            if tensor.shape != expected[name].shape:
                raise ValueError(f"{weights_path}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                                 f"the config expects {tuple(expected[name].shape)}")
        cast_tensors_(model, {name: tensor.dtype for name, tensor in state.items()})
        model.load_state_dict(state, strict=False)
        model.special_tokens = load_special_tokens(directory)
        return model.to(map_location, dtype)


def _merge_row_commits(mixer: nn.Module, entry: dict[str, torch.Tensor], kept: dict, tree: TokenTree,
                       rows: torch.Tensor, distinct: list[int]) -> None:
    """Commit each of the ``distinct`` nodes into a copy of the fixed-size cache ``entry`` and give every row
    (``rows`` [B], its node; -1 keeps its entries) the entries of its own node's copy, in place."""
    merged = dict(entry)
    for node in distinct:
        if node == -1:  # those rows keep their entries
            continue
        accepted = accepted_path(tree, node)
        take = rows == node
        copy = dict(entry)
        mixer.commit_tree(copy, kept, accepted)
        for key, value in copy.items():
            old = merged.get(key)
            if old is None:  # a first commit creates the entry (e.g. a conv window): zeros elsewhere
                old = torch.zeros_like(value)
            merged[key] = torch.where(take.view(-1, *([1] * (value.ndim - 1))), value, old)
    entry.clear()
    entry.update(merged)


def _tree_of(parents: torch.Tensor | TokenTree, tree_ids: torch.Tensor) -> TokenTree:
    """``parents`` as a TokenTree (validated by ``token_tree``) on the device of ``tree_ids`` [B, N],
    checked to have N nodes."""
    tree = parents if isinstance(parents, TokenTree) else token_tree(parents)
    if tree.num_nodes != tree_ids.shape[1]:
        raise ValueError(f"parents describes a tree of {tree.num_nodes} nodes but tree_ids has "
                         f"{tree_ids.shape[1]} tokens per row (shape {tuple(tree_ids.shape)})")
    return tree.to(tree_ids.device)


def check_float_dtype(name: str, dtype: object) -> None:
    """Raise a TypeError unless ``dtype`` is None or a floating-point ``torch.dtype``."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"{name} must be a floating-point torch.dtype (e.g. torch.float32) or None "
                        f"(keep the saved dtypes), got {dtype!r}")
