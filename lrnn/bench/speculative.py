"""``lrnn bench speculative``: greedy decoding speed of trained models, autoregressive vs chain and tree
speculative decoding, with every speculative output checked against the autoregressive one.

For each target model directory (``<run>/model`` of ``lrnn pretrain``: ``config.json``, the weights and
the ``tokenizer.json`` it was trained with) the benchmark decodes ``--new-tokens`` tokens greedily after
each of ``--prompts`` code prompts with:

* ``autoregressive``: ``lrnn.models.generate`` (the baseline of every ratio);
* ``chain``: ``speculative_generate`` with k drafts per step for each k of ``--draft-tokens``, from the draft model
  (``ModelDrafter``) and from prompt lookup (``PromptLookupDrafter``, no draft model);
* ``tree``: ``tree_speculative_generate`` with each ``--branching`` shape (``static_tree``), from the
  draft model (``ModelTreeDrafter``) and from prompt lookup (``PromptLookupTreeDrafter``).

``--batch B`` decodes the prompts in batches of B (the autoregressive baseline batched too; trees only with
an explicit ``--branching`` then, each row with its own tree);
``--chain-batching`` times chains once per listed way of advancing the rows (``speculative_generate``'s
``batching``: each row by its own accepted drafts, or all in lockstep).

``--chain-rollback`` and ``--tree-commit`` time chains / trees once per listed cache mode (chains: snapshot
and replay, or verification as a chain-shaped tree with a commit by state selection; trees: commit by state
selection, or by recomputing the accepted path), interleaved like every other method.

**Prompts: held-out code.** The documents of the training corpus (``--data``; none: the default corpus,
the Python standard library) are numbered as ``lrnn.data.build_shards`` numbers them (the non-empty
documents, in corpus order), and only validation documents (``is_validation_document`` at
``--val-fraction``) are used: ``--prompts`` of those with enough tokens, evenly spaced over them. A
prompt is what a document's start looks like in training: the end-of-document token, then the first
``--prompt-tokens - 1`` tokens. When a model directory sits in a ``lrnn pretrain`` run (``../config.json``
records ``data`` and ``val_fraction``), a corpus or split other than the run's is refused, so a prompt is
never a document the model trained on.

**Exactness.** Greedy speculative decoding must reproduce greedy autoregressive decoding token for
token. Every call (warm-up and timed) is compared with the autoregressive output of its prompt; a
difference is recorded with its position, reported loudly, and makes the command exit with status 1.
Generation does not stop at the end-of-document token, so every call emits exactly ``--new-tokens``.

**Timing.** One untimed autoregressive pass over the prompts (the reference outputs) and one untimed
call of every method (warm-up) come first. Then ``--repeats`` rounds: each round goes over the prompts,
and for each prompt runs every method in turn (the order rotated by one each round), so a slow spell of
a shared machine hits all methods alike. A call is timed from the prompt in to the last new token out
(prefill, drafting, verification and commits included; ``time.perf_counter``, CPU). Per method and
round: tokens/s = new tokens of all prompts / their summed wall time; a row reports the **median** of
the rounds (and the best). The speed-up is the median over rounds of ``autoregressive time / method time``
in the same round (paired, so machine load common to a round cancels). Accepted tokens per step are the
draft tokens accepted per verification step (``SpeculativeStats``), pooled over the prompts. Greedy
decoding is deterministic, so they do not vary between rounds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from lrnn.atomic import atomic_write_text
from lrnn.bench.ops import machine_info
from lrnn.data import (DEFAULT_CORPUS, TextTokenizer, corpus_files, default_corpus_files, is_validation_document,
                       iter_documents)
from lrnn.models import (LanguageModel, ModelConfig, ModelDrafter, ModelTreeDrafter, PromptLookupDrafter,
                         PromptLookupTreeDrafter, SamplingConfig, SpeculativeStats, compile_for_decoding, generate,
                         speculative_generate, tree_speculative_generate)
from lrnn.models.io import CONFIG_NAME, read_json
from lrnn.models.speculative import BATCHINGS, ROLLBACKS
from lrnn.models.tree_speculative import COMMITS, check_branching
from lrnn.training.pretrain import PretrainConfig
from lrnn.validation import check_int

__all__ = ["DESCRIPTION", "Prompt", "Method", "Settings", "validation_prompts", "build_methods", "first_difference",
           "bench_target", "run", "render", "add_arguments", "settings_from_args", "run_from_args"]

DESCRIPTION = ("Greedy decoding speed of trained models: autoregressive vs chain and tree speculative decoding "
               "(draft model and prompt lookup) on held-out code prompts; every speculative output is checked "
               "against the autoregressive one, token for token (a difference: exit status 1).")

AUTOREGRESSIVE = "autoregressive"
"""The baseline method's name: every speed-up is taken against it."""
DEFAULT_BRANCHINGS = ((2, 2, 1), (3, 2, 2, 1))
"""The tree shapes timed without ``--branching``: 10 nodes of depth 3, and 33 nodes of depth 4."""
DEFAULT_ROLLBACK = "auto"
"""``speculative_generate``'s default ``rollback``: chains timed without ``--chain-rollback``."""
DEFAULT_BATCHING = "auto"
"""``speculative_generate``'s default ``batching``: chains timed without ``--chain-batching``."""
DEFAULT_COMMIT = "select"
"""``tree_speculative_generate``'s default ``commit``: trees timed without ``--tree-commit``."""


# ----------------------------------------------------------------------------------------------------
# Prompts


@dataclass(frozen=True)
class Prompt:
    """One prompt: ``ids`` (the end-of-document token, then the start of document number ``document`` of
    the corpus, from the file ``source``)."""

    source: str
    document: int
    ids: list[int]


def validation_prompts(files: Sequence[Path], tokenizer: TextTokenizer, val_fraction: float, count: int,
                       length: int) -> list[Prompt]:
    """``count`` prompts of ``length`` tokens from the validation documents of the corpus ``files``.

    Documents are numbered as ``build_shards`` numbers them (non-empty documents, in corpus order), so
    the held-out ones are those ``is_validation_document(number, val_fraction)``. Of the held-out
    documents with at least ``length - 1`` tokens, ``count`` evenly spaced ones are taken; each prompt
    is ``[eos] + `` its first ``length - 1`` tokens (in training every document starts after an eos).
    Raises a ValueError when fewer than ``count`` documents are long enough.
    """
    check_int("count", count, 1)
    check_int("length", length, 2)
    held_out: list[tuple[Path, int, str]] = []
    number = 0
    for path in files:
        for text in iter_documents(path):
            if not text:  # build_shards skips empty documents: they get no number
                continue
            if is_validation_document(number, val_fraction):
                held_out.append((path, number, text))
            number += 1
    encoded = tokenizer.encode_batch([text for _, _, text in held_out]) if held_out else []
    long_enough = [(path, doc, ids) for (path, doc, _), ids in zip(held_out, encoded) if len(ids) >= length - 1]
    if len(long_enough) < count:
        raise ValueError(f"--prompts {count}: only {len(long_enough)} of the {len(held_out)} validation documents "
                         f"(of {number}, val_fraction {val_fraction}) have the {length - 1} tokens a prompt of "
                         f"--prompt-tokens {length} needs; ask for fewer or shorter prompts")
    chosen = [long_enough[i * len(long_enough) // count] for i in range(count)]
    return [Prompt(str(path), doc, [tokenizer.eos_id, *ids[:length - 1]]) for path, doc, ids in chosen]


# ----------------------------------------------------------------------------------------------------
# Methods

Decode = Callable[[LanguageModel, torch.Tensor, int, SpeculativeStats], torch.Tensor]
"""``decode(target, prompts [B, T], new_tokens, stats) -> [B, T + new_tokens]``, greedy; speculative methods
fill ``stats``."""


@dataclass(frozen=True)
class Method:
    """One way to decode greedily: ``name`` (e.g. ``tree 2,2,1 / lookup``), the drafter (``draft model``,
    ``prompt lookup``, or ``-``), whether it is speculative (has verification steps), and ``decode``."""

    name: str
    drafter: str
    speculative: bool
    decode: Decode


def _greedy(new_tokens: int) -> SamplingConfig:
    """Greedy decoding of exactly ``new_tokens`` tokens (no EOS: every method emits the same count)."""
    return SamplingConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None)


def _autoregressive(target: LanguageModel, ids: torch.Tensor, new_tokens: int, stats: SpeculativeStats) -> torch.Tensor:
    return generate(target, ids, sampling=_greedy(new_tokens))


def _chain(make_drafter: Callable[[], Any], draft_tokens: int, rollback: str, batching: str, target: LanguageModel,
           ids: torch.Tensor, new_tokens: int, stats: SpeculativeStats) -> torch.Tensor:
    return speculative_generate(target, ids, make_drafter(), sampling=_greedy(new_tokens),
                                num_draft_tokens=draft_tokens, stats=stats, rollback=rollback, batching=batching)


def _tree(make_drafter: Callable[[], Any], branching: tuple[int, ...], commit: str, target: LanguageModel,
          ids: torch.Tensor, new_tokens: int, stats: SpeculativeStats) -> torch.Tensor:
    return tree_speculative_generate(target, ids, make_drafter(), branching=branching, sampling=_greedy(new_tokens),
                                     stats=stats, commit=commit)


def build_methods(draft: LanguageModel | None, draft_tokens: int | Sequence[int],
                  branchings: Sequence[tuple[int, ...]], ngram: int,
                  chain_rollbacks: Sequence[str] = (DEFAULT_ROLLBACK,),
                  tree_commits: Sequence[str] = (DEFAULT_COMMIT,), batch: int = 1,
                  chain_batchings: Sequence[str] = (DEFAULT_BATCHING,),
                  tree_nodes: Sequence[int] = ()) -> list[Method]:
    """Autoregressive, then chain and tree speculative decoding from the draft model (when given) and from
    prompt lookup (longest n-gram ``ngram``): chains of each k in ``draft_tokens`` with each of
    ``chain_rollbacks`` (and, at ``batch`` > 1, each of ``chain_batchings``), trees of each branching with
    each of ``tree_commits``, and dynamic trees of at most N nodes for each N of ``tree_nodes`` within each
    branching (the draft model's most likely paths, prompt lookup's best-supported continuations). A name
    shows the mode when it is not the default. Each call gets a fresh drafter (a draft model's cache starts
    empty, as in a new generation); at ``batch`` > 1 one draft model drafter per row."""
    check_int("batch", batch, 1)
    chain_lengths = (draft_tokens,) if isinstance(draft_tokens, int) else tuple(draft_tokens)

    def per_row(make: Callable[[], Any]) -> Callable[[], Any]:
        return make if batch == 1 else lambda: [make() for _ in range(batch)]
    drafters = ([("draft model", per_row(partial(ModelDrafter, draft)), per_row(partial(ModelTreeDrafter, draft)))]
                if draft else []) + \
        [("prompt lookup", partial(PromptLookupDrafter, ngram), partial(PromptLookupTreeDrafter, ngram))]
    methods = [Method(AUTOREGRESSIVE, "-", False, _autoregressive)]
    for k in chain_lengths:
        for label, chain_drafter, _ in drafters:
            for rollback in chain_rollbacks:
                for batching in chain_batchings:
                    name = f"chain k={k}" + ("" if rollback == DEFAULT_ROLLBACK else f", {rollback}") + \
                        ("" if batching == DEFAULT_BATCHING else f", {batching.replace('_', ' ')}")
                    methods.append(Method(name, label, True, partial(_chain, chain_drafter, k, rollback, batching)))
    for branching in branchings:
        shape = ",".join(map(str, branching))
        for label, _, tree_drafter in drafters:
            for commit in tree_commits:
                name = f"tree {shape}" + ("" if commit == DEFAULT_COMMIT else f", {commit}")
                methods.append(Method(name, label, True, partial(_tree, tree_drafter, branching, commit)))
        for nodes in tree_nodes:
            dynamic = ([("draft model", per_row(partial(ModelTreeDrafter, draft, nodes)))] if draft else []) + \
                [("prompt lookup", partial(PromptLookupTreeDrafter, ngram, nodes))]
            for label, tree_drafter in dynamic:
                methods.append(Method(f"tree {shape}, <= {nodes} nodes", label, True,
                                      partial(_tree, tree_drafter, branching, DEFAULT_COMMIT)))
    return methods


# ----------------------------------------------------------------------------------------------------
# Measuring


def first_difference(output: torch.Tensor, reference: torch.Tensor) -> int | None:
    """The first position (0-based, over the flattened token ids) where ``output`` and ``reference`` differ,
    a length difference counting as a difference at the shorter one's end; None when they are equal."""
    a, b = output.flatten(), reference.flatten()
    shorter = min(len(a), len(b))
    unequal = (a[:shorter] != b[:shorter]).nonzero().flatten()
    if len(unequal):
        return int(unequal[0])
    return None if len(a) == len(b) else shorter


@dataclass
class _Call:
    """One call: its round (None: the warm-up), prompt, seconds and speculative counts."""

    round: int | None
    prompt: int
    seconds: float
    stats: SpeculativeStats


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bench_target(target: LanguageModel, methods: Sequence[Method], prompts: Sequence[Prompt], new_tokens: int,
                 repeats: int, log: Callable[[str], None] = _log, batch: int = 1,
                 warm_up_every_prompt: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Time every method on ``target`` (``methods[0]`` must be autoregressive: the reference), the prompts
    decoded in batches of ``batch`` (prompts of one length: no padding); returns the report rows (one per
    method) and the mismatches (every call whose output differs from the reference: method, round -- None
    for the warm-up --, batch of prompts, position, expected and produced token)."""
    if not methods or methods[0].name != AUTOREGRESSIVE:
        raise ValueError(f"methods[0] must be the {AUTOREGRESSIVE!r} reference, got "
                         f"{methods[0].name if methods else 'no methods'!r}")
    check_int("batch", batch, 1)
    if len(prompts) % batch or len({len(p.ids) for p in prompts}) > 1:
        raise ValueError(f"the prompts must split into batches of {batch} of one length, got {len(prompts)} prompts "
                         f"of lengths {sorted({len(p.ids) for p in prompts})}")
    inputs = [torch.tensor([p.ids for p in prompts[start:start + batch]]) for start in range(0, len(prompts), batch)]
    with torch.no_grad():
        references = [_autoregressive(target, ids, new_tokens, SpeculativeStats()) for ids in inputs]
    mismatches: list[dict[str, Any]] = []

    def call(method: Method, p: int, round_: int | None) -> _Call:
        """One call of ``method`` on prompt ``p``, timed and checked (``round_`` None: the warm-up)."""
        stats = SpeculativeStats()
        start = time.perf_counter()
        with torch.no_grad():
            output = method.decode(target, inputs[p], new_tokens, stats)
        seconds = time.perf_counter() - start
        position = first_difference(output, references[p])
        if position is not None:
            mismatches.append(_mismatch(method, round_, p, position, output, references[p], inputs[p].shape[1]))
        return _Call(round_, p, seconds, stats)

    for method in methods:  # warm-up (checked too): one prompt, or all (a compiled model meets new shapes)
        for p in range(len(inputs) if warm_up_every_prompt else 1):
            call(method, p, None)
    calls: dict[str, list[_Call]] = {_key(m): [] for m in methods}
    for r in range(repeats):
        order = list(methods[r % len(methods):]) + list(methods[:r % len(methods)])
        for p in range(len(inputs)):
            for method in order:
                calls[_key(method)].append(call(method, p, r))
        seconds = {name: sum(c.seconds for c in done if c.round == r) for name, done in calls.items()}
        log(f"  round {r + 1}/{repeats}: " + ", ".join(f"{name} {len(prompts) * new_tokens / s:.1f} tok/s"
                                                   for name, s in seconds.items()))
    baseline = _round_seconds(calls[_key(methods[0])], repeats)
    rows = [_row(method, calls[_key(method)], baseline, repeats, len(prompts) * new_tokens,
                 sum(m["method"] == _key(method) for m in mismatches)) for method in methods]
    return rows, mismatches


def _key(method: Method) -> str:
    """A method's label in the report: its name and, for speculative methods, the drafter."""
    return method.name if method.drafter == "-" else f"{method.name} / {method.drafter}"


def _mismatch(method: Method, round_: int | None, prompt: int, position: int, output: torch.Tensor,
              reference: torch.Tensor, prompt_length: int) -> dict[str, Any]:
    """The record of one output that differs from the autoregressive reference (positions count new tokens)."""
    def token(ids: torch.Tensor) -> int | None:
        flat = ids.flatten()
        return int(flat[position]) if position < len(flat) else None
    row, column = divmod(position, reference.shape[-1])  # the flattened position in [B, T + n]
    return {"method": _key(method), "round": round_, "prompt": prompt, "row": row, "new_token": column - prompt_length,
            "expected": token(reference), "got": token(output), "length": output.shape[-1] - prompt_length,
            "expected_length": reference.shape[-1] - prompt_length}


def _round_seconds(calls: Sequence[_Call], repeats: int) -> list[float]:
    """Wall time of each round, summed over its prompts."""
    return [sum(c.seconds for c in calls if c.round == r) for r in range(repeats)]


def _row(method: Method, calls: Sequence[_Call], baseline: Sequence[float], repeats: int, tokens_per_round: int,
         mismatches: int) -> dict[str, Any]:
    """One method's report row: tokens/s per round, median and best; the paired speed-up; verification counts."""
    seconds = _round_seconds(calls, repeats)
    rates = [tokens_per_round / s for s in seconds]
    row: dict[str, Any] = {"method": _key(method), "shape": method.name, "drafter": method.drafter,
                           "round_seconds": seconds, "tokens_per_s_rounds": rates,
                           "tokens_per_s": statistics.median(rates), "tokens_per_s_best": max(rates),
                           "speedup": statistics.median(b / s for b, s in zip(baseline, seconds)),
                           "calls": len(calls), "mismatches": mismatches}
    if method.speculative:
        steps = sum(c.stats.steps for c in calls)
        accepted = sum(sum(c.stats.accepted) for c in calls)
        proposed = sum(sum(c.stats.proposed) for c in calls)
        forwards = sum(c.stats.target_forwards for c in calls)
        row.update(steps=steps, accepted_per_step=accepted / steps if steps else None,
                   acceptance=accepted / proposed if proposed else None,
                   target_forwards_per_token=forwards / (repeats * tokens_per_round))
    else:  # a prefill and one forward per further token
        row.update(steps=None, accepted_per_step=None, acceptance=None, target_forwards_per_token=1.0)
    return row


# ----------------------------------------------------------------------------------------------------
# Settings and the run


@dataclass(frozen=True)
class Settings:
    """The resolved command line: model directories, prompts and what to time."""

    targets: list[Path]
    draft: Path | None
    corpus: str
    val_fraction: float
    prompts: list[Prompt]
    prompt_tokens: int
    new_tokens: int
    draft_tokens: tuple[int, ...]
    branchings: list[tuple[int, ...]]
    ngram: int
    repeats: int
    threads: int
    batch: int = 1
    chain_rollbacks: tuple[str, ...] = (DEFAULT_ROLLBACK,)
    chain_batchings: tuple[str, ...] = (DEFAULT_BATCHING,)
    tree_commits: tuple[str, ...] = (DEFAULT_COMMIT,)
    tree_nodes: tuple[int, ...] = ()
    compile: bool = False


def _describe(model: LanguageModel) -> str:
    """``gated_deltanet [-1, 1], 8 x d_model 256, 9.4M parameters`` (every mixer of a hybrid, in layer order)."""
    c = model.config
    mixers = "+".join(dict.fromkeys(c.layer_mixers()))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return (f"{mixers}{' [-1, 1]' if c.negative_eigenvalues else ''}, {c.n_layers} x d_model {c.d_model}, "
            f"{params:.1f}M parameters")


def run(s: Settings, command: str, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Every target of ``s`` with ``s.threads`` intra-op threads (restored afterwards): the JSON-ready report."""
    previous = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        machine = machine_info(torch.device("cpu"))
        draft = LanguageModel.from_pretrained(s.draft).eval() if s.draft else None
        if draft is not None and s.compile:
            compile_for_decoding(draft)
        methods = build_methods(draft, s.draft_tokens, s.branchings, s.ngram, s.chain_rollbacks, s.tree_commits,
                                s.batch, s.chain_batchings, s.tree_nodes)
        targets, rows, mismatches = [], [], []
        for directory in s.targets:
            target = LanguageModel.from_pretrained(directory).eval()
            if s.compile:
                compile_for_decoding(target)
            if s.batch > 1 and s.branchings and not target.per_row_commit:
                raise ValueError(f"--target {directory} has a layer that cannot commit per row: its trees run at "
                                 f"batch 1 (drop --branching at --batch {s.batch})")
            targets.append({"directory": str(directory), "description": _describe(target)})
            log(f"{directory} ({targets[-1]['description']}): {len(methods)} methods x {len(s.prompts)} prompts "
                f"(batch {s.batch}) x {s.repeats} rounds")
            target_rows, target_mismatches = bench_target(target, methods, s.prompts, s.new_tokens, s.repeats, log,
                                                          s.batch, warm_up_every_prompt=s.compile)
            rows += [{"target": str(directory), **row} for row in target_rows]
            mismatches += [{"target": str(directory), **m} for m in target_mismatches]
        load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    finally:
        torch.set_num_threads(previous)
    return {"command": command, "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "machine": machine, "load_average_at_end": load_end, "threads": s.threads,
            "draft": None if draft is None else {"directory": str(s.draft), "description": _describe(draft)},
            "targets": targets, "corpus": s.corpus, "val_fraction": s.val_fraction,
            "prompts": [{"source": p.source, "document": p.document, "tokens": len(p.ids)} for p in s.prompts],
            "prompt_tokens": s.prompt_tokens, "new_tokens": s.new_tokens, "repeats": s.repeats, "batch": s.batch,
            "compiled": s.compile,
            "methods": [_key(m) for m in methods], "rows": rows, "mismatches": mismatches}


# ----------------------------------------------------------------------------------------------------
# Report


COLUMNS = ("method", "drafter", "tok/s (median)", "tok/s (best)", "x autoregressive", "accepted / step",
           "acceptance", "target forwards / token", "= autoregressive")


def _optional(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _cells(row: dict[str, Any]) -> list[str]:
    return [row["shape"], row["drafter"], f"{row['tokens_per_s']:.1f}", f"{row['tokens_per_s_best']:.1f}",
            f"{row['speedup']:.2f}", _optional(row["accepted_per_step"], ".2f"),
            "-" if row["acceptance"] is None else f"{100 * row['acceptance']:.0f}%",
            f"{row['target_forwards_per_token']:.2f}",
            "yes" if not row["mismatches"] else f"**NO ({row['mismatches']} of {row['calls']} + warm-up)**"]


def render(report: dict[str, Any]) -> str:
    """The report as markdown: the header (command, machine, load, threads, prompts), one table per target,
    then the exactness verdict."""
    m = report["machine"]
    load = lambda value: "unknown" if value is None else f"{value:.2f}"  # noqa: E731
    prompts = report["prompts"]
    files = sorted({Path(p["source"]).name for p in prompts})
    draft = report["draft"]
    lines = ["### lrnn bench speculative", "",
             f"Generated by `{report['command']}` on {report['date']}, lrnn at git revision {m['lrnn_revision']}.",
             "",
             f"Machine: {m['cpu_model']}, {m['logical_cores']} logical cores; torch {m['torch']}, float32, "
             f"**{report['threads']} intra-op thread(s)**"
             + ("; **compiled** (`compile_for_decoding`: the forward and `forward_tree` of every model; every "
                "method warmed up on every prompt first, so the timed rounds do not compile)"
                if report.get("compiled") else "") + ";"
             f" 1-minute load average {load(m['load_average_at_start'])} "
             f"at the start, {load(report['load_average_at_end'])} at the end. Wall-clock times: other work on "
             "the machine slows every method; the methods are interleaved per prompt so that it slows them alike, "
             "and the speed-up is paired per round.",
             "",
             f"Prompts: {len(prompts)} validation documents (held out of training: 1 document in "
             f"{round(1 / report['val_fraction'])}, val_fraction {report['val_fraction']}) of "
             f"{report['corpus']}: {', '.join(files)}; each prompt is the end-of-document token and the "
             f"document's first {report['prompt_tokens'] - 1} tokens ({report['prompt_tokens']} tokens). Greedy "
             f"decoding of {report['new_tokens']} new tokens per prompt (no stop at end-of-document)"
             + (f", in batches of {report.get('batch', 1)} prompts (chains per row -- each row advances by its own "
                "accepted drafts, the default -- or in lockstep -- every row by "
                "the fewest any row accepted; accepted / step counts per row and step)."
                if report.get("batch", 1) > 1 else "."),
             "",
             "Draft model: " + (f"`{draft['directory']}` ({draft['description']})." if draft else "none (prompt "
                                "lookup only)."),
             "",
             f"tok/s: new tokens of all prompts / their wall time (prompt in to last token out), per round; the "
             f"median (and best) of {report['repeats']} rounds. x autoregressive: median over rounds of the "
             "autoregressive time / the method's time in the same round. accepted / step: draft tokens accepted "
             "per verification step (a step emits them + 1); acceptance: accepted / drafted tokens (tree: nodes); "
             "target forwards / token: prefill, verifications and commits / replays per new token.", ""]
    for target in report["targets"]:
        rows = [r for r in report["rows"] if r["target"] == target["directory"]]
        lines += [f"#### `{target['directory']}` ({target['description']})", "",
                  "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows] + [""]
    lines += _verdict(report)
    return "\n".join(lines) + "\n"


def _verdict(report: dict[str, Any]) -> list[str]:
    """The exactness line: every speculative output equal to the autoregressive one, or every difference."""
    mismatches = report["mismatches"]
    calls = sum(r["calls"] + 1 for r in report["rows"] if r["steps"] is not None)  # + 1: the warm-up call
    if not mismatches:
        return [f"Exactness: all {calls} speculative outputs (timed and warm-up) equal the autoregressive output "
                "token for token."]
    lines = [f"**FAILED: {len(mismatches)} output(s) differ from greedy autoregressive decoding** (greedy "
             "speculative decoding must reproduce it token for token):", ""]
    for x in mismatches:
        when = "warm-up" if x["round"] is None else f"round {x['round'] + 1}"
        row = f", row {x['row']}" if x.get("row") else ""  # a row of a batch (--batch)
        lines.append(f"- `{x['target']}` {x['method']}, {when}, prompt {x['prompt']}{row}: new token {x['new_token']} is "
                     f"{x['got']}, autoregressive gives {x['expected']} ({x['length']} vs {x['expected_length']} new "
                     "tokens)")
    return lines


# ----------------------------------------------------------------------------------------------------
# Command line


def _branching(text: str) -> tuple[int, ...]:
    """``--branching`` "2,2,1" -> (2, 2, 1)."""
    try:
        return check_branching(tuple(int(part) for part in text.split(",")))
    except ValueError:  # not integers (int() refused them) or not positive (check_branching)
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas (children per node at "
                                         f"each depth, e.g. 2,2,1), got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``speculative`` options on ``parser``."""
    parser.add_argument("--target", action="append", type=Path, required=True, metavar="DIR",
                        help="target model directory (lrnn format with its tokenizer.json, e.g. <run>/model of "
                             "lrnn pretrain); repeat for several targets")
    parser.add_argument("--draft", type=Path, default=None, metavar="DIR",
                        help="draft model directory (the targets' tokenizer); without it only prompt lookup drafts")
    parser.add_argument("--data", nargs="+", default=[], metavar="PATH",
                        help="the training corpus the prompts are held out of (default: the default corpus, the "
                             "Python standard library, as lrnn pretrain)")
    parser.add_argument("--val-fraction", type=float, default=PretrainConfig.val_fraction,
                        help="every round(1/f)-th document was held out in training; the prompts are those "
                             f"(default {PretrainConfig.val_fraction}, lrnn pretrain's)")
    parser.add_argument("--prompts", type=int, default=8, help="number of prompts (default 8)")
    parser.add_argument("--prompt-tokens", type=int, default=128,
                        help="tokens per prompt: end-of-document + the document's start (default 128)")
    parser.add_argument("--new-tokens", type=int, default=128, help="new tokens per prompt (default 128)")
    parser.add_argument("--draft-tokens", type=int, nargs="+", default=[4], metavar="K",
                        help="k, drafts per chain step; several: chains of each k, each timed as a method (default 4)")
    parser.add_argument("--batch", type=int, default=1,
                        help="decode the prompts in batches of this many (every method, the baseline too; trees "
                             "only with an explicit --branching); must divide "
                             "--prompts (default 1)")
    parser.add_argument("--branching", type=_branching, nargs="*", default=None, metavar="B1,B2,..",
                        help="tree shapes: B_d children per node at depth d; the flag alone: no trees, chains only "
                             f"(default: {' '.join(','.join(map(str, b)) for b in DEFAULT_BRANCHINGS)} at --batch 1, "
                             "none at --batch > 1)")
    parser.add_argument("--chain-rollback", nargs="+", choices=ROLLBACKS, default=[DEFAULT_ROLLBACK],
                        help="how chains leave the cache on the accepted prefix, each timed as a method: replay "
                             "(snapshot, replay after a rejection), select (verified as a chain-shaped tree, "
                             "committed by state selection) or auto (speculative_generate's default: select, "
                             "replay for models with a layer without a tree form) "
                             f"(default {DEFAULT_ROLLBACK})")
    parser.add_argument("--chain-batching", nargs="+", choices=BATCHINGS, default=[DEFAULT_BATCHING],
                        help="at --batch > 1, how chains advance the rows, each timed as a method: per_row (each "
                             "row by its own accepted drafts), lockstep (every row by "
                             "the fewest any row accepted) or auto (speculative_generate's default: per_row where "
                             f"possible) (default {DEFAULT_BATCHING})")
    parser.add_argument("--tree-commit", nargs="+", choices=COMMITS, default=[DEFAULT_COMMIT],
                        help="how trees commit the accepted path, each timed as a method: select (from the states "
                             "the verification kept) or recompute (one more forward over the path) "
                             f"(default {DEFAULT_COMMIT})")
    parser.add_argument("--tree-nodes", type=int, nargs="+", default=None, metavar="N",
                        help="also time dynamic trees of at most N nodes within each --branching, once per N: the "
                             "draft model's N most likely paths (a beam of N per level) and prompt lookup's N "
                             "nodes that most earlier occurrences continue through")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the forward and forward_tree of the target(s) and the draft model "
                             "(compile_for_decoding) for every method, the autoregressive baseline too; every method "
                             "is warmed up on every prompt first (compiling takes minutes on a CPU)")
    parser.add_argument("--ngram", type=int, default=3, help="longest n-gram prompt lookup matches (default 3)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed rounds over all prompts and methods; rows report the median (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--json", metavar="PATH", help="also write the report (rows, mismatches) as JSON to PATH")


def _check_model_dir(directory: Path, flag: str) -> ModelConfig:
    """The config of an lrnn model directory with an LM head, else an error naming ``flag``."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{flag} {directory}: no such model directory")
    config = ModelConfig.load(directory / CONFIG_NAME)
    if config.num_labels is not None:
        raise ValueError(f"{flag} {directory}: a token classifier (num_labels={config.num_labels}), not a language "
                         "model")
    return config


def _check_split(directory: Path, flag: str, data: list[str], val_fraction: float) -> None:
    """Refuse a corpus or split other than the one the ``lrnn pretrain`` run around ``directory`` trained on
    (``../config.json`` with ``data`` and ``val_fraction``): the prompts would not be held out for it."""
    run_config = directory.resolve().parent / CONFIG_NAME
    if not run_config.is_file():
        return
    recorded = read_json(run_config)
    if "data" not in recorded or "val_fraction" not in recorded:  # not a pretraining run
        return
    same_data = [Path(p).resolve() for p in recorded["data"]] == [Path(p).resolve() for p in data]
    if not same_data or recorded["val_fraction"] != val_fraction:
        trained = recorded["data"] or "the default corpus"
        raise ValueError(f"{flag} {directory} was trained ({run_config}) on {trained} with val_fraction "
                         f"{recorded['val_fraction']}, not on {data or 'the default corpus'} with val_fraction "
                         f"{val_fraction}: pass --data / --val-fraction to match, so that the prompts are "
                         "documents it held out")


def _check_same_tokenizer(tokenizer: TextTokenizer, other: TextTokenizer, flag: str, directory: Path) -> None:
    """Speculative decoding compares token ids: every model must read text with the same tokenizer."""
    if json.loads(other.path.read_text()) != json.loads(tokenizer.path.read_text()):
        raise ValueError(f"{flag} {directory}: its tokenizer ({other.path}) differs from the first target's "
                         f"({tokenizer.path}); the draft and every target must share one tokenizer (token ids "
                         "are compared)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Check the flags and the model directories (configs, tokenizers, training split), pick the prompts.
    Raises ValueError / TypeError / FileNotFoundError naming the flag."""
    for flag, value, minimum in (("--prompts", args.prompts, 1), ("--prompt-tokens", args.prompt_tokens, 2),
                                 ("--new-tokens", args.new_tokens, 1), ("--ngram", args.ngram, 1),
                                 ("--repeats", args.repeats, 1), ("--threads", args.threads, 1),
                                 ("--batch", args.batch, 1)):
        check_int(flag, value, minimum)
    if args.prompts % args.batch:
        raise ValueError(f"--batch {args.batch} must divide --prompts {args.prompts}")
    batchings = tuple(dict.fromkeys(args.chain_batching))
    if args.batch == 1 and batchings != (DEFAULT_BATCHING,):
        raise ValueError("--chain-batching: the ways of advancing a batch's rows differ only at --batch > 1")
    if args.batch > 1 and args.branching and "recompute" in args.tree_commit:
        raise ValueError("--tree-commit recompute: the trees of a batch commit each row's node by selection")
    if "per_row" in batchings and "replay" in args.chain_rollback:
        raise ValueError("--chain-batching per_row commits each row by state selection: it cannot be timed with "
                         "--chain-rollback replay")
    for nodes in args.tree_nodes or ():
        check_int("--tree-nodes", nodes, 1)
    for k in args.draft_tokens:
        check_int("--draft-tokens", k, 1)
    if not 0 < args.val_fraction <= 0.5:
        raise ValueError(f"--val-fraction must lie in (0, 0.5], got {args.val_fraction}")
    dirs = [("--target", d) for d in args.target] + ([("--draft", args.draft)] if args.draft else [])
    configs = [_check_model_dir(d, flag) for flag, d in dirs]
    for (flag, d), config in zip(dirs, configs):
        if config.vocab_size != configs[0].vocab_size:
            raise ValueError(f"{flag} {d}: vocab_size {config.vocab_size} differs from the first target's "
                             f"{configs[0].vocab_size}; the draft and every target must share one vocabulary")
        _check_split(d, flag, args.data, args.val_fraction)
    tokenizer = TextTokenizer(dirs[0][1])
    if tokenizer.vocab_size > configs[0].vocab_size:
        raise ValueError(f"--target {dirs[0][1]}: its tokenizer has {tokenizer.vocab_size} tokens, more than the "
                         f"model's vocab_size {configs[0].vocab_size}")
    for flag, d in dirs[1:]:
        _check_same_tokenizer(tokenizer, TextTokenizer(d), flag, d)
    files = corpus_files(args.data) if args.data else default_corpus_files()
    corpus = ", ".join(args.data) if args.data else f"{DEFAULT_CORPUS} ({len(files)} files)"
    prompts = validation_prompts(files, tokenizer, args.val_fraction, args.prompts, args.prompt_tokens)
    return Settings(targets=list(args.target), draft=args.draft, corpus=corpus, val_fraction=args.val_fraction,
                    prompts=prompts, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                    draft_tokens=tuple(dict.fromkeys(args.draft_tokens)),
                    branchings=list(args.branching if args.branching is not None
                                    else [] if args.batch > 1 else DEFAULT_BRANCHINGS),
                    ngram=args.ngram, repeats=args.repeats, threads=args.threads, batch=args.batch,
                    chain_rollbacks=tuple(dict.fromkeys(args.chain_rollback)), chain_batchings=batchings,
                    tree_commits=tuple(dict.fromkeys(args.tree_commit)),
                    tree_nodes=tuple(dict.fromkeys(args.tree_nodes or ())), compile=args.compile)


def run_from_args(args: argparse.Namespace, command: str, parser: argparse.ArgumentParser) -> int:
    """``lrnn bench speculative``: check the flags (errors are usage errors), run, print the markdown report,
    write JSON if asked. Exit status 1 when a speculative output differs from the autoregressive one."""
    try:
        settings = settings_from_args(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        parser.error(str(err))
    report = run(settings, command)
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr, flush=True)
    print(render(report), end="")
    if report["mismatches"]:
        print(f"FAILED: {len(report['mismatches'])} speculative output(s) differ from greedy autoregressive "
              "decoding (listed above)", file=sys.stderr, flush=True)
        return 1
    return 0
