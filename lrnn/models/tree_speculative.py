"""Tree speculative decoding (greedy or sampled): draft a token tree, verify every branch in one forward.

One step, with the target's cache covering every committed token but the last one (the *pending* token):

1. a ``TreeDrafter`` proposes a tree of draft tokens after the committed sequence -- ``static_tree``
   shapes (``branching[d]`` children per node at depth d, e.g. ``(2, 2, 1)``) filled by a draft model's
   top-k (``ModelTreeDrafter``), or the distinct continuations of earlier n-gram matches
   (``PromptLookupTreeDrafter``);
2. the target verifies ``[pending] + tree`` in one ``LanguageModel.forward_tree`` from its cache (every
   mixer's tree path: the ancestor mask in the tree ops, S4D's kernel over path lags, the LSTM one cell
   step per tree level), giving the next-token logits after every node;
3. verification walks down from the pending token. Greedy (``greedy_walk``): while the target's argmax
   after the current node is one of its children, move to that child; the accepted path plus the argmax
   after its last node are emitted (a + 1 tokens), so the output is greedy decoding token for token.
   Sampling (``sampling_walk``): rejection sampling of the node's children one after the other (below);
4. the cache is advanced by the accepted path with ``LanguageModel.commit_tree_path``.

**Commit by state selection.** ``forward_tree`` leaves the cache untouched, so nothing has to be rolled
back. It runs with ``keep_states=True``: every mixer keeps its per-node op inputs (the short convs' inputs,
the recurrence's k, v, decays and betas, attention's rotated keys and values; the LSTM its per-node
(h, c), S4D its discretised inputs and powers), and the commit writes the states after the accepted node
from them -- the conv windows along the path, the decode steps ``decay_step`` / ``delta_step`` over the
path's kept inputs, the path's keys and values appended to the KV cache -- with no projection, MLP or head
run again: no second target forward. ``commit="recompute"`` keeps the reference commit instead: one
ordinary cached forward over ``pending + accepted drafts`` (exact by construction, one more forward over at
most depth + 1 tokens per step). The tests check that both leave the same cache.

**Sampling: sequential rejection with point-mass proposals.** At a node with target distribution ``p``
(``sampling_probs``: temperature, top_k, top_p) and children holding tokens ``t_1 .. t_k``: start with the
residual ``r = p``; child ``t_i`` is accepted with probability ``r(t_i) / sum(r)``, and then the walk
continues at that child; else ``r(t_i) = 0``. When every child is rejected (or at a leaf) the next token
is drawn from ``r`` and the step ends. Exactness, by induction over i: with ``r_i`` = p conditioned on
"not t_1 .. t_{i-1}", the emitted token is t_i with probability ``r_i(t_i)`` and otherwise follows ``r_{i+1}``
= ``r_i`` conditioned on "not t_i", a mixture equal to ``r_i``; so ``r_1 = p`` is emitted, and an accepted
child continues with the target's distribution after it. This holds for any tree chosen before the
verifier's random draws (both drafters here are deterministic given the committed sequence; repeated
sibling tokens only waste nodes). A drafter that *sampled* its children from a draft distribution q would
accept more often with SpecInfer's multi-candidate rule (accept with ``min(1, r(t) / q(t))``, residual
``norm(max(r - q, 0))``); that rule is not implemented, since no drafter here samples.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from lrnn.layers import Cache
from lrnn.models.generation import SamplingConfig, check_token_ids, sampling_probs, select_next
from lrnn.models.lm import LanguageModel
from lrnn.models.speculative import (RowProgress, SpeculativeStats, _emit, _emit_columns, _finished_rows, _prompts,
                                     check_language_model, check_prompts, per_row_drafters)
from lrnn.ops import token_tree
from lrnn.validation import check_int


COMMITS = ("select", "recompute")
"""How ``tree_speculative_generate`` advances the cache by the accepted path (``commit=``)."""


@dataclass(frozen=True)
class TreeDraft:
    """A tree of draft tokens after the committed sequence: ``tokens`` [N] (int64) and ``parents`` [N]
    (int64, topological order, ``parents[i] < i``; -1: the node follows the last committed token)."""

    tokens: torch.Tensor
    parents: torch.Tensor


class TreeDrafter(Protocol):
    """Anything that proposes a draft tree after ``sequence`` [L] (every committed token, prompt included)
    with at most ``branching[d]`` children per node at depth d and at most ``len(branching)`` levels."""

    def propose_tree(self, sequence: torch.Tensor, branching: tuple[int, ...]) -> TreeDraft: ...


def static_tree(branching: Sequence[int]) -> torch.Tensor:
    """Parents [N] of the full tree with ``branching[d]`` children per node at depth d, level by level
    (so topological). ``(2, 2, 1)``: 2 root children, 4 grandchildren, 4 great-grandchildren, N = 10."""
    branching = check_branching(branching)
    parents, level = [], [-1]
    for width in branching:
        next_level = []
        for parent in level:
            for _ in range(width):
                next_level.append(len(parents))
                parents.append(parent)
        level = next_level
    return torch.tensor(parents, dtype=torch.long)


def check_branching(branching: object) -> tuple[int, ...]:
    """``branching`` as a tuple of positive ints (children per node at each depth), else a ValueError."""
    if isinstance(branching, (str, bytes)) or not isinstance(branching, Sequence) or not branching:
        raise ValueError(f"branching must be a non-empty sequence of positive ints (children per node at each "
                         f"depth, e.g. (2, 2, 1)), got {branching!r}")
    return tuple(check_int(f"branching[{depth}]", width, 1) for depth, width in enumerate(branching))


# ---- drafters ------------------------------------------------------------------------------------
class ModelTreeDrafter:
    """A tree filled by a small ``LanguageModel`` (the target's vocabulary): each node's children are the draft
    model's top-``branching[d]`` next tokens after the node's path.

    ``max_nodes=None``: the full static tree (``static_tree(branching)``). ``max_nodes=N``: a **dynamic** tree
    of at most N nodes shaped by the draft model's confidence (as EAGLE-2 does): every node is scored by the
    draft model's log-probability of its whole path; each level keeps the N best-scored children of the
    previous level's kept nodes (a beam), and the tree is the N best-scored nodes of all levels -- a
    connected tree, since a node never scores above its parent. Confident paths grow deep, uncertain
    positions get siblings, and the verification pass stays at N + 1 tokens whatever ``branching`` allows.

    The tree grows one level per draft-model ``forward_tree`` (the levels so far, from the draft model's
    cache), so drafting costs ``len(branching)`` tree passes. The cache covers the committed sequence but
    its last token (the root of the drafting tree) and only grows with committed tokens: ``forward_tree``
    does not change it, so nothing is rolled back. The tree is a deterministic function of the committed
    sequence (fixed before the verifier draws), which is what keeps tree sampling exact.
    """

    def __init__(self, model: LanguageModel, max_nodes: int | None = None) -> None:
        check_language_model("model", model)
        self.model = model
        self.max_nodes = None if max_nodes is None else check_int("max_nodes", max_nodes, 1)
        self.forwards = 0  # catch-up forwards and tree passes of the draft model
        self._cache: Cache | None = None
        self._consumed: torch.Tensor | None = None  # the tokens the cache has consumed

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    def propose_tree(self, sequence: torch.Tensor, branching: tuple[int, ...]) -> TreeDraft:
        self._catch_up(sequence[:-1])
        tokens, parents, frontier = [int(sequence[-1])], [-1], [0]  # node 0: the last committed token
        scores = [0.0]  # each node's path log-probability under the draft model
        for width in branching:
            logits = self.model.forward_tree(torch.tensor([tokens], device=sequence.device), self._cache,
                                             torch.tensor(parents, device=sequence.device))[0]
            self.forwards += 1
            candidates = []  # (path score, parent, token), in the static tree's order
            for node in frontier:
                top = torch.log_softmax(logits[node].float(), dim=-1).topk(min(width, self.vocab_size))
                candidates += [(scores[node] + value, node, token)
                               for value, token in zip(top.values.tolist(), top.indices.tolist())]
            if self.max_nodes is not None:  # the beam: the best max_nodes children (stable: ties keep order)
                candidates = sorted(candidates, key=lambda c: -c[0])[:self.max_nodes]
            frontier = []
            for score, parent, token in candidates:
                frontier.append(len(tokens))
                tokens.append(token)
                parents.append(parent)
                scores.append(score)
        return _best_nodes(tokens[1:], [p - 1 for p in parents[1:]], scores[1:], self.max_nodes, sequence.device)

    def _catch_up(self, committed: torch.Tensor) -> None:
        """Advance the cache to ``committed`` [L]: from the consumed tokens if they are its prefix, else
        from scratch (a new generation)."""
        consumed = self._consumed
        if consumed is None or len(consumed) > len(committed) or not torch.equal(committed[:len(consumed)], consumed):
            self._cache, consumed = self.model.new_cache(), committed[:0]
        if len(committed) > len(consumed):
            self.model(committed[len(consumed):][None], cache=self._cache, logits_to_keep=1)
            self.forwards += 1
        self._consumed = committed


class PromptLookupTreeDrafter:
    """Drafting without a model: the continuations of *every* earlier occurrence of the sequence's last
    ``n`` tokens (``n = max_ngram, .., 1``, the longest n with a match), merged into a tree (a trie: shared
    prefixes share nodes), latest occurrence first, at most ``branching[d]`` children per node at depth d.
    No match: an empty tree (the step decodes one token).

    ``max_nodes=None``: every node the trie gets within ``branching``. ``max_nodes=N``: a **dynamic** tree of
    at most N nodes -- the N nodes with the most *support* (the number of occurrences whose continuation
    runs through the node: how often the text went that way), ties to the earlier node (the more recent
    occurrence, or the node nearer the root). A parent's support is at least its child's and the parent
    comes first, so the kept nodes form a tree. With a single occurrence it is that continuation cut to N
    tokens (a chain); where earlier text went several ways it branches, and a deep ``branching`` such as
    ``(3, 2, 1, 1, 1, 1, 1, 1)`` lets well-supported continuations run deep while the verification pass stays
    at N + 1 tokens.
    """

    def __init__(self, max_ngram: int = 3, max_nodes: int | None = None) -> None:
        self.max_ngram = check_int("max_ngram", max_ngram, 1)
        self.max_nodes = None if max_nodes is None else check_int("max_nodes", max_nodes, 1)

    def propose_tree(self, sequence: torch.Tensor, branching: tuple[int, ...]) -> TreeDraft:
        tokens, parents, support = [], [], []
        children: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
        widths: dict[int, int] = {}  # node -> its number of children
        for start in self._continuation_starts(sequence):
            parent = -1
            for depth, token in enumerate(sequence[start:start + len(branching)].tolist()):
                node = children.get((parent, token))
                if node is None:
                    if widths.get(parent, 0) >= branching[depth]:
                        break  # this node is full: the rest of the continuation has no place
                    node = children[(parent, token)] = len(tokens)
                    widths[parent] = widths.get(parent, 0) + 1
                    tokens.append(token)
                    parents.append(parent)
                    support.append(0)
                support[node] += 1
                parent = node
        return _best_nodes(tokens, parents, support, self.max_nodes, sequence.device)

    def _continuation_starts(self, sequence: torch.Tensor) -> list[int]:
        """Where the continuations of the longest matching n-gram start, latest occurrence first."""
        for n in range(min(self.max_ngram, len(sequence) - 1), 0, -1):
            windows = sequence[:-1].unfold(0, n, 1)  # every n-gram but the final one itself
            hits = (windows == sequence[-n:]).all(dim=1).nonzero().flatten() + n
            if len(hits):
                return hits.flip(0).tolist()
        return []


def _best_nodes(tokens: list[int], parents: list[int], scores: Sequence[float], max_nodes: int | None,
                device: torch.device) -> TreeDraft:
    """The draft tree (parents counted from the first draft, -1: a root child; topological order) cut to its
    ``max_nodes`` best-scored nodes (None: all), kept in their original order. Ties go to the earlier node,
    so with scores that never rise from a parent to its child (path log-probabilities, lookup support) a
    parent is kept whenever its child is: the kept nodes are a tree."""
    if max_nodes is not None and len(tokens) > max_nodes:
        kept = sorted(sorted(range(len(tokens)), key=lambda m: -scores[m])[:max_nodes])  # the sort is stable
        index = {old: new for new, old in enumerate(kept)}
        tokens = [tokens[m] for m in kept]
        parents = [-1 if parents[m] < 0 else index[parents[m]] for m in kept]
    return TreeDraft(torch.tensor(tokens, dtype=torch.long, device=device),
                     torch.tensor(parents, dtype=torch.long, device=device))


# ---- generation ----------------------------------------------------------------------------------
@torch.no_grad()
def tree_speculative_generate(model: LanguageModel, input_ids: torch.Tensor,
                              drafter: TreeDrafter | Sequence[TreeDrafter], branching: Sequence[int] = (2, 2, 1),
                              sampling: SamplingConfig | None = None, generator: torch.Generator | None = None,
                              on_token: Callable[[torch.Tensor], None] | None = None,
                              stats: SpeculativeStats | None = None, commit: str = "select",
                              attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` after each prompt, a draft tree verified per target forward.

    Greedy output equals ``generate``'s token for token; sampled output has the distribution of
    ``generate``'s (``sampling_walk``); generation stops at ``eos_token_id`` (included). ``stats`` (a
    ``SpeculativeStats``) counts per step the drafted nodes (``proposed``) and the accepted path length
    (``accepted``); its ``replays`` are the commit forwards (one per step that drafted and continues, with
    ``commit="recompute"`` only). A step whose drafter proposed nothing runs an ordinary decode step of
    the pending token instead of a one-node tree pass (it commits itself).

    **Batches** (B > 1; ``model.per_row_commit``: every built-in mixer, attention and hybrids included)
    advance per row: every row drafts its own tree, the trees are laid over one another (``union_tree``:
    the i-th child of a node in one row and in another share a node of the union), one tree pass verifies
    the union, each row walks its own tree (its nodes' logits) and commits its own accepted node by
    selection (``commit_tree_path`` with one node per row). Exact like batch 1; a step costs the union's
    nodes.

    Args:
        model: the target ``LanguageModel``. input_ids: [B, T] prompts (T >= 1), left-padded when their
            lengths differ (``attention_mask`` [B, T], 1 = token, as for ``generate``).
        drafter: a ``TreeDrafter`` (``ModelTreeDrafter``, ``PromptLookupTreeDrafter`` or your own) for every
            row, or a sequence of B of them (a ``ModelTreeDrafter`` follows one sequence with its cache).
        branching: the most children per node at each depth, e.g. (2, 2, 1); near ``max_new_tokens`` the
            tree is cut to the levels whose tokens can still be emitted.
        sampling: a ``SamplingConfig`` (default: greedy, 32 tokens); ``do_sample`` with its temperature,
            top_k and top_p samples.
        generator: the random numbers of sampling (the first token and every verification step).
        on_token: optional callback receiving the tokens of each new position as a [B] tensor (streaming;
            in a batch, a position is passed on once every row has it).
        commit: how the cache advances by the accepted path: ``"select"`` (the states after the accepted
            node, from what the verification pass kept) or ``"recompute"`` (one more cached forward over
            the path: the reference; batch 1 only).
    Returns:
        [B, T + n] token ids, n <= max_new_tokens.
    """
    sampling = sampling or SamplingConfig(do_sample=False)
    drafters, branching = _check_arguments(model, input_ids, attention_mask, drafter, branching, sampling, commit)
    stats = stats if stats is not None else SpeculativeStats()
    stats.rows = input_ids.shape[0]
    start = time.perf_counter()
    cache = model.new_cache()
    logits = model(input_ids, cache=cache, attention_mask=attention_mask, logits_to_keep=1)[:, -1]
    stats.target_forwards += 1
    stats.prefill_s = time.perf_counter() - start
    if sampling.max_new_tokens == 0:
        return input_ids.clone()
    pending = select_next(logits, sampling, generator)  # [B]: emitted, not yet in the cache
    _emit(pending, on_token)
    first = time.perf_counter()
    prompts = _prompts(input_ids, attention_mask)  # without the left padding: what the drafters see
    if input_ids.shape[0] > 1:
        out = _rows_steps(model, cache, pending, prompts, drafters, branching, sampling, generator, on_token, stats)
    else:
        out = _one_row_steps(model, cache, pending, prompts[0], drafters[0], branching, sampling, generator,
                             on_token, stats, commit == "select")
    stats.new_tokens = out.shape[1]
    stats.decode_s = time.perf_counter() - first
    return torch.cat([input_ids, out], dim=1)


def _one_row_steps(model: LanguageModel, cache: Cache, pending: torch.Tensor, prompt: torch.Tensor,
                   drafter: TreeDrafter, branching: tuple[int, ...], sampling: SamplingConfig,
                   generator: torch.Generator | None, on_token, stats: SpeculativeStats, select: bool) -> torch.Tensor:
    """The decode loop of one prompt (``pending`` [1] emitted after ``prompt`` [T]): the new tokens [1, n]."""
    new, sequence = [pending], torch.cat([prompt, pending])
    remaining = sampling.max_new_tokens - 1
    finished = _finished_rows(pending, sampling.eos_token_id)  # [1]
    while remaining and not bool(finished.all()):
        levels = branching[:remaining - 1]  # a step emits at most len(levels) + 1 tokens
        draft = _checked(drafter.propose_tree(sequence, levels), levels, model.config.vocab_size, sequence) \
            if levels else TreeDraft(sequence[:0], sequence[:0])
        ids = torch.cat([pending, draft.tokens])[None]  # node 0: the pending token
        tree = token_tree(torch.cat([pending.new_tensor([-1]), draft.parents + 1]))
        # Nothing drafted (no n-gram match, say): an ordinary decode step of the pending token, which is
        # its own commit -- the tree pass and the commit of a one-node tree cost more than the step.
        committed = not len(draft.tokens)
        if committed:
            logits, kept = model(ids, cache=cache), None
        elif select:
            logits, kept = model.forward_tree(ids, cache, tree, keep_states=True)
        else:
            logits, kept = model.forward_tree(ids, cache, tree), None
        logits = logits[0]  # [N + 1, V]
        stats.target_forwards += 1
        node, token, accepted = sampling_walk(logits, ids[0], tree.parents, sampling, generator) \
            if sampling.do_sample else greedy_walk(logits, ids[0], tree.parents)
        stats.proposed.append(len(draft.tokens))
        stats.accepted.append(len(accepted) - 1)
        emitted, finished = _emit_columns(torch.cat([ids[0, accepted[1:]], token[None]])[None], finished, sampling,
                                          on_token)
        emitted = emitted[0]
        new.append(emitted)
        sequence = torch.cat([sequence, emitted])
        remaining -= len(emitted)
        if bool(finished.all()) or not remaining:
            break  # the cache is not needed any more
        if not committed:
            model.commit_tree_path(ids, cache, tree, node, states=kept)
            if not select:
                stats.target_forwards += 1
                stats.replays += 1
        pending = token[None]
    return torch.cat(new)[None]


def _rows_steps(model: LanguageModel, cache: Cache, pending: torch.Tensor, prompts: list[torch.Tensor],
                drafters: list[TreeDrafter], branching: tuple[int, ...], sampling: SamplingConfig,
                generator: torch.Generator | None, on_token, stats: SpeculativeStats) -> torch.Tensor:
    """The decode loop of a batch, each row advanced by its own accepted path (see ``tree_speculative_generate``).
    Returns the new tokens [B, n], ``pending`` [B] (already emitted) first; rows ended by EOS are padded."""
    progress = RowProgress(pending, [torch.cat([p, t[None]]) for p, t in zip(prompts, pending)], sampling, on_token)
    while progress.live:
        drafts = {}
        for row in progress.live:
            levels, sequence = branching[:progress.room(row) - 1], progress.sequences[row]  # <= len(levels) + 1 tokens
            drafts[row] = _checked(drafters[row].propose_tree(sequence, levels), levels, model.config.vocab_size,
                                   sequence) if levels else TreeDraft(sequence[:0], sequence[:0])
        union, places = union_tree({row: draft.parents for row, draft in drafts.items()})
        ids = progress.pending.new_full((len(pending), 1 + len(union)), sampling.pad_token_id)  # node 0: pending
        ids[:, 0] = progress.pending
        for row, draft in drafts.items():
            ids[row, 1 + places[row]] = draft.tokens
        tree = token_tree(torch.cat([union.new_tensor([-1]), union + 1]))
        logits, kept = model.forward_tree(ids, cache, tree, keep_states=True)
        stats.target_forwards += 1
        for row, draft in drafts.items():
            own = torch.cat([places[row].new_zeros(1), 1 + places[row]])  # the row's nodes in the union
            parents = torch.cat([draft.parents.new_tensor([-1]), draft.parents + 1])
            row_ids = ids[row, own]
            node, token, path = sampling_walk(logits[row, own], row_ids, parents, sampling, generator) \
                if sampling.do_sample else greedy_walk(logits[row, own], row_ids, parents)
            stats.proposed.append(len(draft.tokens))
            stats.accepted.append(len(path) - 1)
            progress.advance(row, torch.cat([row_ids[path[1:]], token[None]]), node=int(own[node]))
        if progress.step_done():
            break
        model.commit_tree_path(ids, cache, tree, progress.nodes, states=kept)
    return progress.result()


def union_tree(trees: dict[int, torch.Tensor]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Lay draft trees over one another: the union's node for a tree's node is found by the child positions
    along its path (the i-th child of the j-th child of the root, ...), so a node of the union stands for
    the nodes at the same place in every tree that has one.

    Args: trees: per key, parents [N_k] (topological, -1: a root child), as ``TreeDraft.parents``.
    Returns: (the union's parents [U], level by level, so topological; per key, the union node of each of
    its nodes [N_k]).
    """
    children = {key: [[] for _ in range(len(parents) + 1)] for key, parents in trees.items()}  # [0]: the root
    for key, parents in trees.items():
        for node, parent in enumerate(parents.tolist()):
            children[key][parent + 1].append(node)
    union: list[int] = []
    places = {key: [0] * len(parents) for key, parents in trees.items()}
    level = [(-1, {key: -1 for key in trees})]  # (union node, each tree's node there; -1: the root)
    while level:
        next_level = []
        for here, nodes in level:
            kids = {key: children[key][node + 1] for key, node in nodes.items()}
            for i in range(max((len(k) for k in kids.values()), default=0)):
                there = {key: k[i] for key, k in kids.items() if i < len(k)}
                for key, node in there.items():
                    places[key][node] = len(union)
                union.append(here)
                next_level.append((len(union) - 1, there))
        level = next_level
    return torch.tensor(union, dtype=torch.long), {key: torch.tensor(p, dtype=torch.long) for key, p in places.items()}


def greedy_walk(logits: torch.Tensor, tokens: torch.Tensor,
                parents: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Greedy verification of a tree whose node 0 is the pending token: from node 0, move to the child
    holding the target's argmax while there is one.

    Args: logits [N, V] (next-token logits after each node), tokens [N], parents [N] (node 0's is -1).
    Returns: (the last accepted node, the target's argmax after it [] int64, the accepted path [a + 1]
    of node indices from node 0).
    """
    node, path = 0, [0]
    while True:
        token = logits[node].argmax(-1)
        match = ((parents == node) & (tokens == token)).nonzero().flatten()
        if not len(match):
            return node, token, torch.tensor(path, dtype=torch.long, device=tokens.device)
        node = int(match[0])
        path.append(node)


def sampling_walk(logits: torch.Tensor, tokens: torch.Tensor, parents: torch.Tensor, sampling: SamplingConfig,
                  generator: torch.Generator | None = None) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Sampled verification of a tree whose node 0 is the pending token, keeping the target's distribution.

    At each node, with ``r = sampling_probs(logits[node])``: its children are tried in order, child token t
    accepted with probability ``r(t) / sum(r)`` (then the walk moves there), else ``r(t) = 0``; with every
    child rejected (or at a leaf) the next token is drawn from ``r``. The emitted token after each node
    follows the target's p exactly (proof in the module docstring).

    Args: logits [N, V] (next-token logits after each node), tokens [N], parents [N] (node 0's is -1).
    Returns: (the last accepted node, the token drawn after it [] int64, the accepted path [a + 1] of node
    indices from node 0), as ``greedy_walk``.
    """
    node, path = 0, [0]
    while True:
        residual = sampling_probs(logits[node], sampling)  # [V], a fresh tensor: zeroed in place below
        for child in (parents == node).nonzero().flatten().tolist():
            token = tokens[child]
            if _accept_child(torch.rand((), generator=generator, device=residual.device), residual, token):
                node = child
                path.append(child)
                break
            _reject(residual, token)
        else:
            token = torch.multinomial(residual, 1, generator=generator)[0]
            return node, token, torch.tensor(path, dtype=torch.long, device=tokens.device)


def _accept_child(u: torch.Tensor, residual: torch.Tensor, token: torch.Tensor) -> bool:
    """Accept ``token`` with probability ``r(t) / sum(r)`` for u ~ U[0, 1). Written as a ratio, not as
    ``u sum(r) < r(t)``: when t holds all the residual mass the ratio is exactly 1, so t is always
    accepted and the residual never becomes all zero (the product could round up to ``sum(r)``)."""
    return bool(u < residual[token] / residual.sum())


def _reject(residual: torch.Tensor, token: torch.Tensor) -> None:
    """A rejected child: the token is not emitted here, so the rest of the walk draws from p without it."""
    residual[token] = 0.0


def _check_arguments(model: LanguageModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                     drafter: TreeDrafter | Sequence[TreeDrafter], branching: Sequence[int], sampling: SamplingConfig,
                     commit: str) -> tuple[list[TreeDrafter], tuple[int, ...]]:
    """Raise on a bad argument of ``tree_speculative_generate``; return (the drafter of each row, branching)."""
    check_prompts(model, input_ids, attention_mask)
    if commit not in COMMITS:
        raise ValueError(f"commit must be one of {COMMITS}, got {commit!r}")
    batch = input_ids.shape[0]
    if batch > 1 and not model.per_row_commit:
        raise ValueError("tree speculative decoding of a batch needs a model whose layers all commit per row (a "
                         "mixer whose cache grows with the tokens needs a commit_tree_rows method); decode one "
                         "prompt at a time, or use speculative_generate (chains) with batching='lockstep'")
    if batch > 1 and commit != "select":
        raise ValueError("tree speculative decoding of a batch commits each row's node by selection: commit must "
                         f"be 'select', got {commit!r}")
    drafters = per_row_drafters(drafter, input_ids)
    for each in drafters:
        check_tree_drafter(each, model)
    if not isinstance(sampling, SamplingConfig):
        raise TypeError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
    check_token_ids(sampling, model.config.vocab_size)
    return drafters, check_branching(branching)


def check_tree_drafter(drafter: TreeDrafter, model: LanguageModel) -> None:
    """Raise unless ``drafter`` has a ``propose_tree`` method and, if it reports a ``vocab_size`` (a draft
    model), that is ``model``'s."""
    if not callable(getattr(drafter, "propose_tree", None)):
        raise TypeError(f"drafter must have a propose_tree(sequence, branching) method, got {type(drafter).__name__}")
    draft_vocab = getattr(drafter, "vocab_size", None)
    if draft_vocab is not None and draft_vocab != model.config.vocab_size:
        raise ValueError(f"the draft model's vocab_size {draft_vocab} differs from the target's "
                         f"{model.config.vocab_size}: they must share a tokenizer")


def _checked(draft: TreeDraft, branching: tuple[int, ...], vocab_size: int, sequence: torch.Tensor) -> TreeDraft:
    """``draft`` if it is a well-formed tree within ``branching`` (a drafter is user code), else an error."""
    if not isinstance(draft, TreeDraft):
        raise TypeError(f"drafter.propose_tree must return a TreeDraft, got {type(draft).__name__}")
    tokens, parents = draft.tokens, draft.parents
    for name, value in (("tokens", tokens), ("parents", parents)):
        if not isinstance(value, torch.Tensor) or value.ndim != 1 or value.dtype != torch.long \
                or value.device != sequence.device:
            raise ValueError(f"TreeDraft.{name} must be an int64 tensor [N] on {sequence.device}, got {value!r}")
    if len(tokens) != len(parents):
        raise ValueError(f"TreeDraft.tokens and parents must have one entry per node, got {len(tokens)} tokens "
                         f"and {len(parents)} parents")
    if len(tokens) and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(f"TreeDraft.tokens must lie in [0, {vocab_size}), got values in "
                         f"[{int(tokens.min())}, {int(tokens.max())}]")
    tree = token_tree(parents)  # validates the parent indices
    if len(tokens) and int(tree.depths.max()) >= len(branching):
        raise ValueError(f"the draft tree is {int(tree.depths.max()) + 1} levels deep, more than "
                         f"len(branching) = {len(branching)}")
    for depth, width in enumerate(branching):
        at_depth = parents[tree.depths == depth]
        if len(at_depth) and int(torch.unique(at_depth, return_counts=True)[1].max()) > width:
            where = "the root (the committed sequence)" if depth == 0 else f"a node at depth {depth - 1}"
            raise ValueError(f"{where} of the draft tree has more than branching[{depth}] = {width} children")
    return draft
