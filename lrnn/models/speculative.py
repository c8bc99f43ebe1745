"""Chain speculative decoding: a drafter proposes k tokens, the target verifies them in one forward pass.

One step, with the target's cache covering every committed token but the last one (the *pending* token):

1. the drafter proposes ``d_1 .. d_n`` (n <= k) after the committed sequence;
2. the target runs ``[pending, d_1, .., d_n]`` from its cache in one forward (the chunked path over n + 1
   tokens), giving its next-token distributions ``p_1 .. p_{n+1}``;
3. ``verify_draft`` accepts a prefix ``d_1 .. d_a`` and picks one more token ``y`` (a correction at the
   first rejection, or a bonus token drawn from ``p_{n+1}`` when all n are accepted): a + 1 new tokens;
4. the cache is advanced to cover ``pending, d_1 .. d_a``, and ``y`` becomes the pending token.

**Rollback: snapshot and replay.** After step 2 the cache has consumed all n drafts. When some are
rejected, ``speculative_generate`` restores a copy of the cache taken before the verification and replays
``pending, d_1 .. d_a`` in one more forward. The alternative, ``rollback="select"``, verifies the chain as
a chain-shaped tree (``LanguageModel.forward_tree``, which leaves the cache alone and keeps what each layer
needs) and commits the state after position a by selection (``commit_tree_path(..., states=...)``): no
snapshot and no replay, at the price of a tree pass instead of the chunked forward. The default,
``rollback="auto"``, selects, except for models with a layer that has no tree form (``tree_pass_per_node``:
its tree pass runs a forward per node; no built-in mixer since the LSTM's level-by-level pass), which
replay: with the tree passes of the recurrent mixers as cheap as their chunked forwards, selection measured
1.16-1.20x faster end to end than replay with prompt lookup on 9.4M Gated DeltaNet, Mamba-2 and DeltaNet
targets (docs/speculative.md). Replay is exact by construction for every mixer
(the committed state is what the model computes for the accepted tokens, nothing layer-specific) and its
cost is bounded: it runs only after a rejection, over at most k tokens, as one chunked forward.
With every draft accepted there is no replay. The snapshot copies every cache tensor (fixed-size states
for the recurrent layers; attention's KV cache grows with the context, as its own concatenation does);
copies rather than references, so that a layer updating a state tensor in place cannot corrupt it.

**Verification.** Greedy (``do_sample=False``): ``d_i`` is accepted while it is the target's argmax; the
output equals greedy autoregressive decoding token for token. Sampling (Leviathan et al. 2023, Chen et
al. 2023): ``d_i`` is accepted with probability ``min(1, p_i(d_i) / q_i(d_i))``; at the first rejection
``y`` is drawn from the normalised residual ``max(0, p_i - q_i)``, and after n acceptances from
``p_{n+1}``. Each emitted token is then distributed exactly as the target samples it. ``p`` and ``q`` are
both ``sampling_probs`` of the two models' logits (the same temperature, top_k, top_p). A drafter that
reports no ``q`` (prompt lookup) is treated as one-hot: accept with probability ``p_i(d_i)``, else draw from
``p_i`` without ``d_i`` -- exact for any drafter whose choice does not depend on the verifier's randomness.

**Batches.** One forward verifies every row's drafts; then the rows advance either
**per row** -- drafts padded to the longest, the chain verified as a tree, each row committing its own
accepted node by state selection (``commit_tree_path`` with one node per row; ``LanguageModel.per_row_commit``:
every built-in mixer, attention's KV cache growing by the longest path with the empty slots masked) -- or in
**lockstep** -- drafts cut to the shortest, every row advanced by the same ``a + 1`` tokens, ``a`` the fewest
drafts any unfinished row accepted, a row that accepted more keeping its first ``a + 1`` tokens (each accepted
or corrected token has the target's distribution given the tokens before it, whatever is decided after it),
which works with either rollback. Both are exact; per row is the default where it applies. Trees batch per
row too (``tree_speculative_generate``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from lrnn.layers import Cache
from lrnn.models.generation import SamplingConfig, check_token_ids, sampling_probs, select_next
from lrnn.models.lm import LanguageModel
from lrnn.ops import TokenTree, token_tree
from lrnn.validation import check_int


ROLLBACKS = ("auto", "replay", "select")
"""How ``speculative_generate`` leaves the cache on the accepted prefix (``rollback=``)."""


@dataclass(frozen=True)
class Draft:
    """Proposed tokens ``tokens`` [n] (int64) and, for a drafter that samples, the distributions ``probs``
    [n, V] it drew them from (``sampling_probs`` of its logits); None: one-hot on ``tokens``."""

    tokens: torch.Tensor
    probs: torch.Tensor | None = None


class Drafter(Protocol):
    """Anything that proposes up to ``num_tokens`` tokens to follow ``sequence`` [L] (every committed token,
    prompt included). ``sampling`` and ``generator`` are the generation's: a drafter that samples applies
    the same sampling settings and reports its ``probs``."""

    def propose(self, sequence: torch.Tensor, num_tokens: int, sampling: SamplingConfig,
                generator: torch.Generator | None) -> Draft: ...


# ---- drafters ------------------------------------------------------------------------------------
class PromptLookupDrafter:
    """Drafting without a draft model (prompt lookup): find an earlier occurrence of the sequence's last
    ``n`` tokens and propose what followed it, for ``n = max_ngram, .., 1`` (the longest match wins).

    Of several occurrences the latest that is followed by ``num_tokens`` tokens is taken (recent context
    predicts best), else the earliest (the longest continuation). No occurrence: an empty draft (the step
    decodes one token, as autoregressive decoding does).
    """

    def __init__(self, max_ngram: int = 3) -> None:
        self.max_ngram = check_int("max_ngram", max_ngram, 1)

    def propose(self, sequence: torch.Tensor, num_tokens: int, sampling: SamplingConfig,
                generator: torch.Generator | None) -> Draft:
        for n in range(min(self.max_ngram, len(sequence) - 1), 0, -1):
            start = continuation_start(sequence, n, num_tokens)
            if start is not None:
                return Draft(sequence[start:start + num_tokens])
        return Draft(sequence[:0])


def continuation_start(sequence: torch.Tensor, n: int, num_tokens: int) -> int | None:
    """Where the tokens after an earlier occurrence of ``sequence``'s last ``n`` tokens begin: the latest
    occurrence followed by ``num_tokens`` tokens, else the earliest one; None if there is none."""
    windows = sequence[:-1].unfold(0, n, 1)  # every n-gram but the final one itself: [L - n, n]
    hits = (windows == sequence[-n:]).all(dim=1).nonzero().flatten() + n  # continuation starts
    if not len(hits):
        return None
    full = hits[hits + num_tokens <= len(sequence)]
    return int(full[-1]) if len(full) else int(hits[0])


class ModelDrafter:
    """Drafting with a small ``LanguageModel`` of the target's vocabulary: greedy or sampled tokens, one
    cached step each.

    The drafter keeps its own cache across steps. After catching up with the committed sequence it saves
    a copy (the *committed* cache) before drafting; at the next call it continues from the live cache if
    every token it drafted was accepted, else from the committed copy (the same snapshot-and-replay rule
    as the target: the newly committed tokens are fed in one chunked forward).
    """

    def __init__(self, model: LanguageModel) -> None:
        check_language_model("model", model)
        self.model = model
        self.forwards = 0  # forward passes of the draft model (catch-up and drafting steps)
        self._live: tuple[Cache, torch.Tensor] | None = None  # a cache and the tokens it has consumed
        self._committed: tuple[Cache, torch.Tensor] | None = None

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    def propose(self, sequence: torch.Tensor, num_tokens: int, sampling: SamplingConfig,
                generator: torch.Generator | None) -> Draft:
        cache, logits = self._catch_up(sequence)
        self._committed = (cache.clone(), sequence)
        tokens, probs = [], []
        for i in range(num_tokens):
            if sampling.do_sample:
                q = sampling_probs(logits, sampling)
                token = torch.multinomial(q, 1, generator=generator)
                probs.append(q)
            else:
                token = logits.argmax(-1, keepdim=True)
            tokens.append(token)
            if i + 1 < num_tokens:  # the last draft needs no distribution after it
                logits = self._forward(token[None], cache)
        drafted = torch.cat(tokens) if tokens else sequence[:0]
        self._live = (cache, torch.cat([sequence, drafted[:-1]]))
        return Draft(drafted, torch.stack(probs) if probs else None)

    def _catch_up(self, sequence: torch.Tensor) -> tuple[Cache, torch.Tensor]:
        """A cache that has consumed ``sequence`` and the draft model's next-token logits [V]: from the
        live or the committed cache if its tokens are a strict prefix of ``sequence``, else from scratch."""
        for saved in (self._live, self._committed):
            if saved is not None and len(saved[1]) < len(sequence) and torch.equal(sequence[:len(saved[1])], saved[1]):
                cache, consumed = saved
                break
        else:
            cache, consumed = self.model.new_cache(), sequence[:0]
        return cache, self._forward(sequence[len(consumed):][None], cache)

    def _forward(self, ids: torch.Tensor, cache: Cache) -> torch.Tensor:
        self.forwards += 1
        return self.model(ids, cache=cache, logits_to_keep=1)[0, -1]


# ---- verification ----------------------------------------------------------------------------------
def verify_draft(target_logits: torch.Tensor, draft: Draft, sampling: SamplingConfig,
                 generator: torch.Generator | None = None) -> tuple[int, torch.Tensor]:
    """Accept a prefix of ``draft`` and choose the token after it.

    Args:
        target_logits: [n + 1, V] the target's logits after the pending token and after each draft token.
        draft: n proposed tokens (and the drafter's distributions, or None for one-hot).

    Returns:
        (a, y): the number a of accepted draft tokens and the next token y (a 0-d tensor): the target's
        argmax (greedy), or a sample of the residual at the first rejection / of ``p_{n+1}``.
    """
    n = len(draft.tokens)
    if not sampling.do_sample:
        best = target_logits.argmax(-1)  # [n + 1]
        accepted = int(torch.cumprod((draft.tokens == best[:n]).long(), 0).sum())
        return accepted, best[accepted]
    p = sampling_probs(target_logits, sampling)  # [n + 1, V]
    q = F.one_hot(draft.tokens, p.shape[-1]).float() if draft.probs is None else draft.probs.float()
    rows = torch.arange(n, device=p.device)
    u = torch.rand(n, generator=generator, device=p.device)
    accept = _accept(u, p[rows, draft.tokens], q[rows, draft.tokens])
    accepted = int(torch.cumprod(accept.long(), 0).sum())
    if accepted < n:
        residual = (p[accepted] - q[accepted]).clamp(min=0)
        # An all-zero residual means p == q at this position, where a rejection has probability 0.
        distribution = residual if bool(residual.sum() > 0) else p[accepted]
    else:
        distribution = p[n]
    return accepted, torch.multinomial(distribution, 1, generator=generator)[0]


def _accept(u: torch.Tensor, p_draft: torch.Tensor, q_draft: torch.Tensor) -> torch.Tensor:
    """The acceptance rule: ``u < min(1, p/q)`` for u ~ U[0, 1), written ``u q < p`` (no division by 0)."""
    return u * q_draft < p_draft


# ---- generation ------------------------------------------------------------------------------------
@dataclass
class SpeculativeStats:
    """Counts and times of one ``speculative_generate`` call.

    ``proposed[s]`` / ``accepted[s]``: draft tokens proposed / accepted at verification step s, one entry per
    step and unfinished row of a batch (each emits ``accepted[s] + 1`` tokens, fewer only where EOS or
    ``max_new_tokens`` cuts it; in lockstep every row of a step has the batch's n and a).
    """

    proposed: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    target_forwards: int = 0  # prefill + verifications + replays
    replays: int = 0
    new_tokens: int = 0  # per row
    rows: int = 1  # the batch size
    prefill_s: float = 0.0  # prompt in, first new token out
    decode_s: float = 0.0  # first to last new token

    @property
    def steps(self) -> int:
        return len(self.accepted)

    @property
    def accepted_per_step(self) -> float | None:
        """Mean accepted draft tokens per verification step (None before the first step)."""
        return sum(self.accepted) / self.steps if self.steps else None

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted / proposed draft tokens (None when nothing was proposed)."""
        total = sum(self.proposed)
        return sum(self.accepted) / total if total else None

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed: tokens after the first per second of decoding, all rows together (None with fewer
        than 2 tokens per row)."""
        if self.new_tokens < 2 or self.decode_s <= 0:
            return None
        return self.rows * (self.new_tokens - 1) / self.decode_s

    def summary(self) -> str:
        """One line: steps, accepted tokens per step, acceptance rate, target forwards and tokens/s."""
        if not self.steps:
            return f"{self.new_tokens} new tokens, no verification step"
        if self.rows == 1:
            parts = [f"{self.steps} verification steps",
                     f"{self.accepted_per_step:.2f} accepted draft tokens per step "
                     f"({self.new_tokens / self.steps:.2f} new tokens per step)"]
        else:  # an entry per step and row
            parts = [f"{self.steps} row steps over {self.rows} rows",
                     f"{self.accepted_per_step:.2f} accepted draft tokens per row step"]
        if self.acceptance_rate is not None:
            parts.append(f"acceptance {100 * self.acceptance_rate:.0f}% of {sum(self.proposed)} drafted")
        parts.append(f"{self.target_forwards} target forwards ({self.replays} replays)")
        if self.tokens_per_s is not None:
            rows = f" over {self.rows} rows" if self.rows > 1 else ""
            parts.append(f"decode {self.tokens_per_s:.1f} tokens/s{rows}")
        return "; ".join(parts)


@torch.no_grad()
def speculative_generate(model: LanguageModel, input_ids: torch.Tensor, drafter: Drafter | Sequence[Drafter],
                         sampling: SamplingConfig | None = None, num_draft_tokens: int = 4,
                         generator: torch.Generator | None = None,
                         on_token: Callable[[torch.Tensor], None] | None = None,
                         stats: SpeculativeStats | None = None, rollback: str = "auto",
                         attention_mask: torch.Tensor | None = None, batching: str = "auto") -> torch.Tensor:
    """Generate up to ``max_new_tokens`` after each prompt, ``num_draft_tokens`` drafts verified per forward.

    A drop-in for ``generate``: greedy output is ``generate``'s token for token, sampled output has its
    distribution; generation stops at ``eos_token_id`` (included) as ``generate`` does with
    ``eos_check_every=1`` (rows that finish early are filled with ``pad_token_id``).

    Batches (B > 1) verify every row's drafts in one forward, and then advance either **per row** (each row
    by its own accepted drafts + 1: the chain verified as a tree, each row committing its own node by state
    selection; ``model.per_row_commit``: every built-in mixer, attention and hybrids included) or in
    **lockstep** (every row by the fewest drafts an unfinished row accepted + 1, a row that accepted more
    emitting its accepted draft at that position: works with either rollback; the price is that a step
    goes as far as its least lucky row).

    Args:
        model: the target ``LanguageModel``.
        input_ids: [B, T] prompts (T >= 1), left-padded when their lengths differ.
        drafter: a ``Drafter`` (``PromptLookupDrafter``, ``ModelDrafter`` or your own) used for every row, or
            a sequence of B drafters, one per row (a ``ModelDrafter`` follows one sequence with its cache).
        sampling: a ``SamplingConfig`` (default: greedy, 32 tokens).
        num_draft_tokens: k, the most drafts verified per target forward (>= 1).
        on_token: optional callback receiving the tokens of each new position as a [B] tensor (streaming;
            per row, a position is passed on once every row has it).
        stats: optional ``SpeculativeStats`` to fill (its lists are appended to: pass a fresh one per call).
        rollback: how the cache ends on the accepted prefix. ``"replay"``: the ordinary chunked forward
            verifies the drafts (updating the cache) after a snapshot; a rejection restores the snapshot
            and replays the accepted prefix (one more forward). ``"select"``: the drafts are verified as a
            chain-shaped tree (``forward_tree``, parents i - 1, the cache read only), and the accepted node
            is committed by state selection (``commit_tree_path(..., states=...)``): no snapshot, no replay.
            ``"auto"`` (default): ``"select"``, or ``"replay"`` when a layer's tree pass runs a forward per
            node (``model.tree_pass_per_node``: a mixer without a tree form).
        attention_mask: [B, T] (1 = token, 0 = left padding) or None, as for ``generate``.
        batching: ``"per_row"``, ``"lockstep"`` or ``"auto"`` (default: per row where the model allows it
            -- ``model.per_row_commit`` -- and the rollback is ``"select"``, else lockstep). Per row
            needs ``rollback="select"`` (or ``"auto"``, which then selects).

    Returns:
        [B, T + n] token ids, n <= max_new_tokens.
    """
    sampling = sampling or SamplingConfig()
    drafters = _check_arguments(model, input_ids, attention_mask, drafter, sampling, num_draft_tokens)
    rollback, per_row = _modes(model, rollback, batching)
    batch = input_ids.shape[0]
    stats = stats if stats is not None else SpeculativeStats()
    stats.rows = batch
    start = time.perf_counter()
    cache = model.new_cache()
    logits = model(input_ids, cache=cache, attention_mask=attention_mask, logits_to_keep=1)[:, -1]
    stats.target_forwards += 1
    if sampling.max_new_tokens == 0:
        stats.prefill_s = time.perf_counter() - start
        return input_ids.clone()
    pending = select_next(logits, sampling, generator)  # [B]: emitted, not yet in the cache
    _emit(pending, on_token)
    first = time.perf_counter()
    stats.prefill_s = first - start
    sequences = [torch.cat([prompt, token[None]]) for prompt, token in zip(_prompts(input_ids, attention_mask), pending)]
    if per_row and batch > 1:
        out = _per_row_steps(model, cache, pending, sequences, drafters, sampling, num_draft_tokens, generator,
                             on_token, stats)
    else:
        out = _lockstep_steps(model, cache, pending, sequences, drafters, sampling, num_draft_tokens, generator,
                              on_token, stats, rollback)
    stats.new_tokens = out.shape[1]
    stats.decode_s = time.perf_counter() - first
    return torch.cat([input_ids, out], dim=1)


BATCHINGS = ("auto", "per_row", "lockstep")
"""How ``speculative_generate`` advances the rows of a batch (``batching=``)."""


def _modes(model: LanguageModel, rollback: str, batching: str) -> tuple[str, bool]:
    """(the rollback, whether rows advance independently) from the ``rollback`` and ``batching`` arguments."""
    if rollback not in ROLLBACKS:
        raise ValueError(f"rollback must be one of {ROLLBACKS}, got {rollback!r}")
    if batching not in BATCHINGS:
        raise ValueError(f"batching must be one of {BATCHINGS}, got {batching!r}")
    if batching == "per_row":
        if not model.per_row_commit:
            raise ValueError("batching='per_row' needs a model whose layers all commit per row (a mixer whose cache "
                             "grows with the tokens needs a commit_tree_rows method); use batching='lockstep'")
        if rollback == "replay":
            raise ValueError("batching='per_row' commits each row's node by state selection: it needs "
                             "rollback='select' (or 'auto'), not 'replay'")
        return "select", True
    if rollback == "auto":
        rollback = "replay" if model.tree_pass_per_node else "select"
    return rollback, batching == "auto" and rollback == "select" and model.per_row_commit


def _draft_rows(drafters: list[Drafter], sequences: list[torch.Tensor], most: dict[int, int],
                sampling: SamplingConfig, generator: torch.Generator | None, vocab_size: int) -> dict[int, Draft]:
    """Each row's checked draft of at most ``most[row]`` tokens, for the rows in ``most``."""
    return {row: _checked(drafters[row].propose(sequences[row], bound, sampling, generator), bound, vocab_size,
                          sequences[row]) if bound else Draft(sequences[row][:0]) for row, bound in most.items()}


def _padded_ids(pending: torch.Tensor, drafts: dict[int, Draft], n: int, pad: int) -> torch.Tensor:
    """[B, n + 1]: each row's pending token, then its draft padded (or, for a row without one, filled) with
    ``pad`` to n tokens."""
    ids = pending.new_full((len(pending), n + 1), pad)
    ids[:, 0] = pending
    for row, draft in drafts.items():
        ids[row, 1:1 + len(draft.tokens)] = draft.tokens
    return ids


def _chain(chains: dict[int, TokenTree], n: int, device: torch.device) -> TokenTree:
    """The chain-shaped tree of n + 1 nodes (node i follows node i - 1, node 0 the cache), built once per n."""
    if n not in chains:
        chains[n] = token_tree(torch.arange(-1, n, device=device))
    return chains[n]


def _lockstep_steps(model: LanguageModel, cache: Cache, pending: torch.Tensor, sequences: list[torch.Tensor],
                    drafters: list[Drafter], sampling: SamplingConfig, num_draft_tokens: int,
                    generator: torch.Generator | None, on_token, stats: SpeculativeStats,
                    rollback: str) -> torch.Tensor:
    """The decode loop with every row advanced by the same a + 1 tokens per step (batch 1: the plain loop).
    Returns the new tokens [B, n] after the prompts, the first (``pending``) included."""
    batch = len(pending)
    finished = _finished_rows(pending, sampling.eos_token_id)
    new = [pending[:, None]]
    remaining = sampling.max_new_tokens - 1
    chains: dict[int, TokenTree] = {}
    while remaining and not bool(finished.all()):
        most = min(num_draft_tokens, remaining - 1)  # a step emits up to most + 1 tokens
        live = [row for row in range(batch) if not finished[row]]
        drafts = _draft_rows(drafters, sequences, dict.fromkeys(live, most), sampling, generator,
                             model.config.vocab_size)
        n = min(len(draft.tokens) for draft in drafts.values())  # no row can advance further than this
        drafts = {row: _cut(draft, n) for row, draft in drafts.items()}
        ids = _padded_ids(pending, drafts, n, sampling.pad_token_id)  # finished rows: never read
        if rollback == "select":  # the chain as a tree, the cache read only
            chain = _chain(chains, n, ids.device)
            logits, kept = model.forward_tree(ids, cache, chain, keep_states=True)
        else:
            snapshot = cache.clone() if n else None
            logits = model(ids, cache=cache)
        stats.target_forwards += 1
        verdicts = {row: verify_draft(logits[row], drafts[row], sampling, generator) for row in live}
        accepted = min(a for a, _ in verdicts.values())
        tokens = torch.full((batch, accepted + 1), sampling.pad_token_id, dtype=ids.dtype, device=ids.device)
        for row, (a, token) in verdicts.items():  # position a + 1: the row's own token if it stopped there
            tokens[row, :accepted] = ids[row, 1:accepted + 1]
            tokens[row, accepted] = token if a == accepted else ids[row, accepted + 1]
            stats.proposed.append(n)
            stats.accepted.append(accepted)
        emitted, finished = _emit_columns(tokens, finished, sampling, on_token)
        new.append(emitted)
        for row in live:
            sequences[row] = torch.cat([sequences[row], emitted[row]])
        remaining -= emitted.shape[1]
        if bool(finished.all()) or not remaining:
            break  # the cache is not needed any more
        if rollback == "select":  # pending + the accepted drafts: node `accepted` of the chain
            model.commit_tree_path(ids, cache, chain, accepted, states=kept)
        elif accepted < n:  # roll back: replay the accepted prefix from the snapshot
            cache = snapshot
            model(ids[:, :accepted + 1], cache=cache, logits_to_keep=1)
            stats.target_forwards += 1
            stats.replays += 1
        pending = tokens[:, accepted]
    return torch.cat(new, dim=1)


def _per_row_steps(model: LanguageModel, cache: Cache, pending: torch.Tensor, sequences: list[torch.Tensor],
                   drafters: list[Drafter], sampling: SamplingConfig, num_draft_tokens: int,
                   generator: torch.Generator | None, on_token, stats: SpeculativeStats) -> torch.Tensor:
    """The decode loop with each row advanced by its own accepted drafts + 1 (``per_row_commit`` models,
    commits by selection): one chain-shaped tree pass verifies every row's draft (padded to the longest),
    each row commits its own node. Returns the new tokens [B, n] after the prompts, ``pending`` included;
    rows that stopped at EOS are padded."""
    progress = RowProgress(pending, sequences, sampling, on_token)
    chains: dict[int, TokenTree] = {}
    while progress.live:
        most = {row: min(num_draft_tokens, progress.room(row) - 1) for row in progress.live}  # emits <= most + 1
        drafts = _draft_rows(drafters, progress.sequences, most, sampling, generator, model.config.vocab_size)
        n = max(len(draft.tokens) for draft in drafts.values())
        ids = _padded_ids(progress.pending, drafts, n, sampling.pad_token_id)
        chain = _chain(chains, n, ids.device)
        logits, kept = model.forward_tree(ids, cache, chain, keep_states=True)
        stats.target_forwards += 1
        for row, draft in drafts.items():
            a, token = verify_draft(logits[row, :len(draft.tokens) + 1], draft, sampling, generator)
            stats.proposed.append(len(draft.tokens))
            stats.accepted.append(a)
            progress.advance(row, torch.cat([draft.tokens[:a], token[None]]), node=a)
        if progress.step_done():
            break
        model.commit_tree_path(ids, cache, chain, progress.nodes, states=kept)
    return progress.result()


class RowProgress:
    """The rows of a batch decoded per row (speculative chains and trees): each row's new tokens and
    committed sequence, its pending token, which rows are done (EOS or ``max_new_tokens``), the node each
    row commits after a step, and streaming of the positions that every row has.

    ``pending`` [B]: the first new tokens (already emitted); ``sequences``: each row's prompt + that token.
    """

    def __init__(self, pending: torch.Tensor, sequences: list[torch.Tensor], sampling: SamplingConfig,
                 on_token: Callable[[torch.Tensor], None] | None) -> None:
        self.sampling, self.on_token = sampling, on_token
        self.pending = pending.clone()  # updated row by row; the caller's tensor was streamed
        self.sequences = sequences
        self.rows = [[int(token)] for token in pending]
        self.done = [self._ends(tokens, eos=sampling.eos_token_id is not None and tokens[0] == sampling.eos_token_id)
                     for tokens in self.rows]
        self.nodes = torch.full((len(pending),), -1, dtype=torch.long)
        self.streamed = 1  # positions passed to on_token

    @property
    def live(self) -> list[int]:
        """The rows still decoding."""
        return [row for row, done in enumerate(self.done) if not done]

    def room(self, row: int) -> int:
        """How many more tokens ``row`` may emit."""
        return self.sampling.max_new_tokens - len(self.rows[row])

    def advance(self, row: int, tokens: torch.Tensor, node: int) -> None:
        """Row ``row`` emits ``tokens`` [a + 1] (cut after an EOS), the last one its new pending token, and
        will commit ``node`` (-1, nothing, once the row is done)."""
        emitted, eos = _cut_at_eos(tokens, self.sampling.eos_token_id)
        self.rows[row] += emitted.tolist()
        self.sequences[row] = torch.cat([self.sequences[row], emitted])
        self.done[row] = self._ends(self.rows[row], eos)
        self.nodes[row] = -1 if self.done[row] else node
        self.pending[row] = tokens[-1]

    def step_done(self) -> bool:
        """After a step's rows advanced: stream what every row has; whether every row is done."""
        self._stream(min(len(tokens) for tokens, done in zip(self.rows, self.done) if not done)
                     if not all(self.done) else None)
        return all(self.done)

    def result(self) -> torch.Tensor:
        """The new tokens [B, n] (rows ended by EOS padded), the rest streamed."""
        width = max(len(tokens) for tokens in self.rows)
        rows = [tokens + [self.sampling.pad_token_id] * (width - len(tokens)) for tokens in self.rows]
        self._stream(width)
        return torch.tensor(rows, dtype=self.pending.dtype, device=self.pending.device)

    def _ends(self, tokens: list[int], eos: bool) -> bool:
        return eos or len(tokens) >= self.sampling.max_new_tokens

    def _stream(self, ready: int | None) -> None:
        """Pass to ``on_token`` the positions up to ``ready`` (None: every row's) not passed yet, as [B]
        tensors (a row that is done gives padding after its end)."""
        ready = max(len(tokens) for tokens in self.rows) if ready is None else ready
        for position in range(self.streamed, ready):
            if self.on_token is not None:
                self.on_token(self.pending.new_tensor([tokens[position] if position < len(tokens)
                                                       else self.sampling.pad_token_id for tokens in self.rows]))
        self.streamed = max(self.streamed, ready)


def _emit_columns(tokens: torch.Tensor, finished: torch.Tensor, sampling: SamplingConfig,
                  on_token: Callable[[torch.Tensor], None] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Emit a step's new ``tokens`` [B, a + 1] position by position: rows already ``finished`` [B] (bool) and
    every position after a row's EOS get ``pad_token_id``, and the step ends at the position where the last
    row finishes. Returns (the emitted tokens [B, <= a + 1], the rows finished after them)."""
    columns = []
    for column in tokens.unbind(1):
        column = torch.where(finished, torch.full_like(column, sampling.pad_token_id), column)
        finished = finished | _finished_rows(column, sampling.eos_token_id)
        columns.append(column)
        _emit(column, on_token)
        if bool(finished.all()):
            break
    return torch.stack(columns, dim=1), finished


def _cut_at_eos(tokens: torch.Tensor, eos_token_id: int | None) -> tuple[torch.Tensor, bool]:
    """(``tokens`` [n] up to and including the first EOS, whether there was one)."""
    if eos_token_id is not None:
        hits = (tokens == eos_token_id).nonzero()
        if len(hits):
            return tokens[:int(hits[0]) + 1], True
    return tokens, False


def _finished_rows(tokens: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """bool [B]: which of the tokens [B] end their row (EOS); all False without an EOS id."""
    if eos_token_id is None:
        return torch.zeros_like(tokens, dtype=torch.bool)
    return tokens == eos_token_id


def _prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[torch.Tensor]:
    """Each row's prompt tokens [T_b] without its left padding (what a drafter should see)."""
    if attention_mask is None:
        return list(input_ids.unbind(0))
    return [row[keep.bool()] for row, keep in zip(input_ids, attention_mask)]


def _cut(draft: Draft, n: int) -> Draft:
    """The first ``n`` tokens of ``draft`` (and their distributions)."""
    if len(draft.tokens) == n:
        return draft
    return Draft(draft.tokens[:n], None if draft.probs is None else draft.probs[:n])


def _emit(token: torch.Tensor, on_token: Callable[[torch.Tensor], None] | None) -> None:
    if on_token is not None:
        on_token(token)


def _check_arguments(model: LanguageModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                     drafter: Drafter | Sequence[Drafter], sampling: SamplingConfig,
                     num_draft_tokens: int) -> list[Drafter]:
    """Raise on a bad argument of ``speculative_generate``; return the drafter of each row."""
    check_prompts(model, input_ids, attention_mask)
    drafters = per_row_drafters(drafter, input_ids)
    for each in drafters:
        check_drafter(each, model)
    check_int("num_draft_tokens", num_draft_tokens, 1)
    if not isinstance(sampling, SamplingConfig):
        raise TypeError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
    check_token_ids(sampling, model.config.vocab_size)
    return drafters


def check_prompts(model: LanguageModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
    """Raise unless ``model`` is a language model and ``input_ids`` integer prompts [B, T >= 1], left-padded
    as ``attention_mask`` (None or [B, T]) says."""
    check_language_model("model", model)
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.shape[0] < 1 \
            or input_ids.shape[1] < 1 or input_ids.is_floating_point() or input_ids.is_complex() \
            or input_ids.dtype == torch.bool:
        got = (f"{input_ids.dtype} tensor of shape {tuple(input_ids.shape)}" if isinstance(input_ids, torch.Tensor)
               else type(input_ids).__name__)
        raise ValueError(f"input_ids must be integer token ids [B, T] with B, T >= 1, got {got}")
    if attention_mask is not None:
        check_left_padding(attention_mask, input_ids)


def per_row_drafters(drafter, input_ids: torch.Tensor) -> list:
    """One drafter per row of ``input_ids`` [B, T]: ``drafter`` itself B times, or ``drafter`` if it is a
    sequence of B drafters."""
    batch = input_ids.shape[0]
    if isinstance(drafter, Sequence):
        if len(drafter) != batch:
            raise ValueError(f"drafter must be one drafter or one per row: {batch} for input_ids of shape "
                             f"{tuple(input_ids.shape)}, got a sequence of {len(drafter)}")
        return list(drafter)
    return [drafter] * batch


def check_left_padding(attention_mask: torch.Tensor, input_ids: torch.Tensor) -> None:
    """Raise unless ``attention_mask`` [B, T] (like ``input_ids``) holds 0 / 1 with each row's zeros before
    its ones (left padding) and at least one token per row."""
    if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(input_ids.shape):
        got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must be a tensor of the shape of input_ids {tuple(input_ids.shape)}, "
                         f"got {got}")
    if attention_mask.is_floating_point() or attention_mask.is_complex() or \
            not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask must hold integers or booleans 0 / 1 (1 = token, 0 = left padding)")
    mask = attention_mask.long()
    if bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise ValueError("attention_mask must be left padding: in each row, every 0 before the first 1")
    if bool((mask[:, -1] == 0).any()):
        raise ValueError("attention_mask has a row with no token: every prompt needs at least one")


def check_language_model(name: str, model: object) -> None:
    """Raise unless ``model`` is a ``LanguageModel`` with an LM head (not a token classifier)."""
    if not isinstance(model, LanguageModel):
        raise TypeError(f"{name} must be a LanguageModel, got {type(model).__name__}")
    if model.config.num_labels is not None:
        raise ValueError(f"{name} must have an LM head (num_labels=None), got a token classifier with "
                         f"num_labels={model.config.num_labels}")


def check_drafter(drafter: Drafter, model: LanguageModel) -> None:
    """Raise unless ``drafter`` has a ``propose`` method and, if it reports a ``vocab_size`` (a draft model),
    that is ``model``'s."""
    if not callable(getattr(drafter, "propose", None)):
        raise TypeError(f"drafter must have a propose(sequence, num_tokens, sampling, generator) method, "
                        f"got {type(drafter).__name__}")
    draft_vocab = getattr(drafter, "vocab_size", None)
    if draft_vocab is not None and draft_vocab != model.config.vocab_size:
        raise ValueError(f"the draft model's vocab_size {draft_vocab} differs from the target's "
                         f"{model.config.vocab_size}: they must share a tokenizer")


def _checked(draft: Draft, most: int, vocab_size: int, sequence: torch.Tensor) -> Draft:
    """``draft`` if it is well formed (a drafter is user code), else a ValueError naming what is wrong."""
    if not isinstance(draft, Draft):
        raise TypeError(f"drafter.propose must return a Draft, got {type(draft).__name__}")
    tokens, probs = draft.tokens, draft.probs
    if tokens.ndim != 1 or tokens.dtype != torch.long or len(tokens) > most or tokens.device != sequence.device:
        raise ValueError(f"drafter.propose must return at most {most} int64 tokens [n] on {sequence.device}, got "
                         f"a {tokens.dtype} tensor of shape {tuple(tokens.shape)} on {tokens.device}")
    if probs is not None and tuple(probs.shape) != (len(tokens), vocab_size):
        raise ValueError(f"Draft.probs must be [n, vocab_size] = [{len(tokens)}, {vocab_size}], "
                         f"got {tuple(probs.shape)}")
    return draft
