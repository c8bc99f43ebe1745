"""Pretraining in one process: bit-exact resume, crash-safe checkpoints, gradient accumulation, activation
checkpointing, document resets in the loss, the exported model, the logs and the plot."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from lrnn.data import PackedRows
from lrnn.models import LanguageModel
from lrnn.models.tokenizer import Tokenizer
from lrnn.training import read_log
from lrnn.training.pretrain import Processes, open_pretrain, pretrain, train_step
from tests.training.pretrain_testkit import make_corpus, tiny_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A corpus, a cache shared by every run, and a straight 4-step run to compare against."""
    root = tmp_path_factory.mktemp("pretrain")
    corpus, cache = make_corpus(root / "corpus"), root / "cache"
    result = pretrain(tiny_config(corpus), root / "straight", cache_dir=cache, quiet=True, print_fn=lambda _: None)
    return corpus, cache, root / "straight", result


def _losses(run_dir):
    return [r["loss"] for r in read_log(run_dir / "log.jsonl") if r["kind"] == "train"]


def _weights(run_dir):
    return LanguageModel.from_pretrained(run_dir / "model").state_dict()


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_interrupted_and_resumed_run_is_bit_identical(setup, tmp_path):
    corpus, cache, straight, _ = setup
    out = tmp_path / "run"
    first = pretrain(tiny_config(corpus), out, cache_dir=cache, quiet=True, stop_after=2, print_fn=lambda _: None)
    assert first == {"finished": False, "step": 2}
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    assert not (out / "model").exists()
    pretrain(tiny_config(corpus), out, cache_dir=cache, quiet=True, print_fn=lambda _: None)
    assert _losses(out) == _losses(straight)  # the log keeps one line per step, none twice
    assert _same_weights(_weights(out), _weights(straight))


def test_a_crash_while_saving_leaves_the_previous_checkpoint(setup, tmp_path, monkeypatch):
    import torch.distributed.checkpoint as dcp

    corpus, cache, straight, _ = setup
    out, real_save, calls = tmp_path / "run", dcp.save, []

    def save_then_crash(state, **kwargs):
        calls.append(kwargs["checkpoint_id"])
        real_save(state, **kwargs)
        if len(calls) == 2:  # the step-4 checkpoint is written, but the process dies before it is renamed
            raise KeyboardInterrupt
    monkeypatch.setattr(dcp, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_config(corpus), out, cache_dir=cache, quiet=True, print_fn=lambda _: None)
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    monkeypatch.undo()
    pretrain(tiny_config(corpus), out, cache_dir=cache, quiet=True, print_fn=lambda _: None)
    assert _same_weights(_weights(out), _weights(straight))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-00000004"]


def test_gradient_accumulation_and_activation_checkpointing_train_the_same(setup, tmp_path):
    corpus, cache, straight, _ = setup
    accumulated = tmp_path / "accumulated"
    pretrain(tiny_config(corpus, micro_batch=1), accumulated, cache_dir=cache, quiet=True, print_fn=lambda _: None)
    assert _losses(accumulated) == pytest.approx(_losses(straight), abs=1e-5)
    checkpointed = tmp_path / "checkpointed"
    pretrain(tiny_config(corpus, activation_checkpointing=True), checkpointed, cache_dir=cache, quiet=True,
             print_fn=lambda _: None)
    assert _same_weights(_weights(checkpointed), _weights(straight))  # recomputation is deterministic


def test_bfloat16_autocast_trains(setup, tmp_path):
    corpus, cache, _, _ = setup
    result = pretrain(tiny_config(corpus, precision="bfloat16", steps=2), tmp_path / "bf16", cache_dir=cache,
                      quiet=True, print_fn=lambda _: None)
    assert all(torch.isfinite(torch.tensor(loss)) for loss in _losses(tmp_path / "bf16"))
    assert result["finished"] and result["val_loss"] < 10


class _FirstRows:
    """A row order whose every step is rows 0, 1, ..., n - 1."""

    def rows(self, step: int, batch_size: int) -> list[int]:
        return list(range(batch_size))


def test_the_training_loss_of_a_packed_row_is_that_of_its_documents_run_alone(setup, tmp_path):
    corpus, cache, _, _ = setup
    run = open_pretrain(tiny_config(corpus, seq_len=128), tmp_path / "run", Processes(0, 1, torch.device("cpu"), False),
                        cache_dir=cache, print_fn=lambda _: None)
    rows = PackedRows(run.shards.streams["train"], run.shards.starts["train"], 128)
    batch = rows.batch([0, 1, 2, 3])
    assert int(batch.seq_starts.sum()) > 4  # several documents per row
    model = run.plain_model.double()
    packed = F.cross_entropy(model(batch.inputs, seq_starts=batch.seq_starts).flatten(0, 1),
                             batch.targets.flatten(), reduction="sum")
    alone = 0.0
    for inputs, targets, starts in zip(batch.inputs, batch.targets, batch.seq_starts):
        bounds = starts.nonzero().flatten().tolist() + [len(inputs)]
        for a, b in zip(bounds, bounds[1:]):
            logits = model(inputs[None, a:b])[0]
            alone += F.cross_entropy(logits, targets[a:b], reduction="sum")
    torch.testing.assert_close(packed, alone, rtol=1e-10, atol=1e-10)
    # ...and the training step passes the flags: its loss is the packed one, not the one without resets.
    run.model.float()
    loss, _ = train_step(run, rows, _FirstRows(), 0)
    assert loss == pytest.approx(packed.item() / (4 * 128), rel=1e-5)


def test_exported_model_logs_and_plot(setup):
    corpus, cache, straight, result = setup
    assert result["finished"] and result["tokens"] == 4 * 4 * 32 and result["processes"] == 1
    model = LanguageModel.from_pretrained(straight / "model")
    tokenizer = Tokenizer(straight / "model")
    assert model.special_tokens.eos_token_id == tokenizer.eos_token_id is not None
    assert model.config.vocab_size == 300 and model.config.mixer == "deltanet"
    records = read_log(straight / "log.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(set(r) >= {"loss", "lr", "grad_norm", "tokens_per_s", "flops_fraction", "tokens"} for r in train)
    assert all(0 < r["flops_fraction"] < 1 for r in train)
    val = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in val] == [2, 4] and val[-1]["val_loss"] == result["val_loss"]
    # bits per byte = nats / ln 2 / bytes: ~2.7 bytes per token here, so bpb < loss / ln 2
    assert 0 < result["val_bpb"] < result["val_loss"] / 0.693
    assert (straight / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((straight / "result.json").read_text())["val_bpb"] == result["val_bpb"]
