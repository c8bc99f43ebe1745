"""``lrnn pretrain`` / ``lrnn tokenizer``: 2 processes (torchrun over gloo; FSDP2, and DDP with gradient
accumulation) equal 1, a 2-process checkpoint resumes on 1, the model loads in ``lrnn generate``, and bad input
gets one line and changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lrnn.cli import main
from lrnn.models import LanguageModel
from lrnn.training import read_log
from tests.training.pretrain_testkit import make_corpus, tiny_flags


@pytest.fixture(autouse=True)
def _keep_threads():
    """``lrnn pretrain`` sets torch's thread count (--threads, default 1): give the next tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """A corpus, a cache and a straight 4-step one-process run made by the CLI."""
    root = tmp_path_factory.mktemp("cli")
    corpus, cache = make_corpus(root / "corpus"), root / "cache"
    threads = torch.get_num_threads()
    assert main(["pretrain", *tiny_flags(corpus), "--cache-dir", str(cache), "--out", str(root / "one")]) == 0
    torch.set_num_threads(threads)
    return corpus, cache, root / "one"


def _train_losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_log(run_dir / "log.jsonl") if r["kind"] == "train"]


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _torchrun(*flags: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 -m lrnn pretrain FLAGS`` (gloo on the CPU), checked to succeed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lrnn",
               "pretrain", *flags]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_processes_equal_one_and_their_checkpoint_resumes_on_one(straight, tmp_path, capsys):
    corpus, cache, one = straight
    out = tmp_path / "two"
    done = _torchrun(*tiny_flags(corpus), "--cache-dir", str(cache), "--out", str(out), "--stop-after", "2")
    assert "on 2 process(es)" in done.stdout and done.stdout.count("stopped after step 2") == 1  # rank 0 speaks
    assert _train_losses(out) == pytest.approx(_train_losses(one)[:2], abs=1e-5)  # same global batch, float32
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    # The FSDP checkpoint of 2 processes resumes in 1 (DCP reshards it) and continues the same run.
    assert main(["pretrain", *tiny_flags(corpus), "--cache-dir", str(cache), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "resuming" in said and "on 1 process(es) (its checkpoint was written by 2)" in said
    assert _train_losses(out) == pytest.approx(_train_losses(one), abs=1e-5)
    resumed = LanguageModel.from_pretrained(out / "model").state_dict()
    for name, tensor in LanguageModel.from_pretrained(one / "model").state_dict().items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-5)


def test_ddp_with_gradient_accumulation_equals_one_process(straight, tmp_path):
    corpus, cache, one = straight
    _torchrun(*tiny_flags(corpus), "--cache-dir", str(cache), "--out", str(tmp_path / "ddp"), "--parallel", "ddp",
              "--micro-batch", "1")  # 2 rows per process in 2 micro-batches of 1
    assert _train_losses(tmp_path / "ddp") == pytest.approx(_train_losses(one), abs=1e-5)


def test_the_exported_model_generates(straight, capsys):
    _, _, one = straight
    assert main(["generate", "--model", str(one / "model"), "--prompt", "def ", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("def ")


def _one_line_error(argv: list[str], capsys, match: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and match in err, err


def test_bad_input_gets_one_line_and_changes_nothing(straight, tmp_path, capsys):
    corpus, cache, one = straight
    flags = [*tiny_flags(corpus), "--cache-dir", str(cache)]
    before = _snapshot(one)
    # Another config in a run directory that holds a run: refused, the run untouched.
    _one_line_error(["pretrain", *flags, "--d-model", "24", "--out", str(one)], capsys,
                    "holds another run's files (its config.json differs in ['d_model'])")
    assert _snapshot(one) == before
    _one_line_error(["pretrain", *flags, "--out", str(one)], capsys, "holds this run, finished (result.json)")
    assert _snapshot(one) == before
    fresh = tmp_path / "fresh"
    _one_line_error(["pretrain", *flags, "--data", str(tmp_path / "missing"), "--out", str(fresh)], capsys,
                    "corpus path not found")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("")
    _one_line_error(["pretrain", *flags, "--data", str(tmp_path / "empty"), "--out", str(fresh)], capsys,
                    "holds no text")
    tokenizer = ["tokenizer", "train", "--data", str(corpus), "--vocab-size", "300", "--out", str(tmp_path / "tok")]
    assert main(tokenizer) == 0
    _one_line_error(["tokenizer", "train", "--data", str(corpus), "--out", str(tmp_path / "tok")], capsys,
                    "tokenizer.json exists; pass --force")
    _one_line_error(["pretrain", *flags, "--tokenizer", str(tmp_path / "tok"), "--vocab-size", "280", "--out",
                     str(fresh)], capsys, "more than the model's vocab_size 280")
    _one_line_error(["pretrain", *flags, "--batch-size", "3", "--micro-batch", "2", "--out", str(fresh)], capsys,
                    "micro_batch 2 must divide the rows per process")
    assert not fresh.exists()


def test_a_checkpoint_of_another_config_is_refused(straight, tmp_path, capsys):
    corpus, cache, _ = straight
    flags = [*tiny_flags(corpus), "--cache-dir", str(cache)]
    out = tmp_path / "run"
    assert main(["pretrain", *flags, "--out", str(out), "--stop-after", "2"]) == 0
    meta = out / "checkpoints" / "step-00000002" / "meta.json"
    # config.json says this run, but its checkpoint was written by another (e.g. a copied checkpoint).
    meta.write_text(meta.read_text().replace('"seed": 0', '"seed": 5'))
    before = _snapshot(out)
    _one_line_error(["pretrain", *flags, "--out", str(out)], capsys,
                    "was written by another config (fields ['seed'] differ)")
    assert _snapshot(out) == before


def test_pretrain_refuses_an_out_under_a_file_before_any_work(tmp_path, capsys):
    """pretrain's own run-directory check used to miss an --out under a file: the error came only after the
    tokenizer and the shards were built. It now shares training's check_run_directory."""
    from lrnn.training.pretrain import PretrainConfig, _holds_this_run

    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    with pytest.raises(ValueError, match="is a file"):
        _holds_this_run(blocker / "run", PretrainConfig(), force=False)
    # Temporary files of an interrupted write are not contents: such a directory is empty.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".config.json.abc.tmp").write_text("{")
    assert _holds_this_run(tmp_path / "run", PretrainConfig(), force=False) is False
