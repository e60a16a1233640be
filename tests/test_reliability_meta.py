"""The meta-trainer on careless and hostile input: run folders, kills at every write, damaged checkpoints and logs,
resuming with another command."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import Killed, quick_config

from learned_torch_optim.meta import MetaTrainer
from learned_torch_optim.meta import trainer as trainer_module
from learned_torch_optim.meta.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]


def train_argv(out: Path, *extra: str, iterations: int = 2) -> list[str]:
    """A `train` command of tiny iterations."""
    argv = ["train", "--task", "quadratic", "--out", str(out), "--iterations", str(iterations), "--horizon", "20"]
    return [*argv, "--unroll", "10", "--meta-batch-size", "2", "--validation-problems", "1", "--no-progress", *extra]


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if an iteration starts."""

    def refuse(self):
        raise AssertionError("training started")

    monkeypatch.setattr(MetaTrainer, "train_iteration", refuse)


def without_elapsed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in rows]


# -- item 1: a folder that is not a run of ours ----------------------------------------------------------------------
def test_train_refuses_a_folder_of_other_files_unless_overwrite(tmp_path, capsys, monkeypatch):
    out = tmp_path / "weights"
    shutil.copytree(ROOT / "pretrained" / "l2l-paper-mnist", out)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    original = MetaTrainer.train_iteration
    monkeypatch.setattr(MetaTrainer, "train_iteration", lambda self: pytest.fail("training started"))
    assert cli_main(train_argv(out)) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err and "model.safetensors" in err
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before

    monkeypatch.setattr(MetaTrainer, "train_iteration", original)
    assert cli_main(train_argv(out, "--overwrite")) == 0
    assert (out / "model.safetensors").read_bytes() != before["model.safetensors"]
    assert (out / "DESCRIPTION").read_bytes() == before["DESCRIPTION"]  # files the run does not write are kept
    assert "--overwrite" not in (out / "README.md").read_text()  # the recorded command reproduces the run anywhere


def test_overwrite_starts_a_new_run_in_place_of_an_old_one(tmp_path):
    MetaTrainer(quick_config(iterations=3), tmp_path).train(progress=False)
    with pytest.raises(ValueError, match="choose one"):
        MetaTrainer(quick_config(iterations=2), tmp_path).train(resume=True, overwrite=True, progress=False)
    fresh = MetaTrainer(quick_config(iterations=2), tmp_path / "fresh")
    fresh.train(progress=False)
    again = MetaTrainer(quick_config(iterations=2), tmp_path)
    again.train(overwrite=True, progress=False)
    assert again.iteration == 2 and without_elapsed(again.rows) == without_elapsed(fresh.rows)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert without_elapsed(rows) == without_elapsed(fresh.rows)


def test_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 1, "meta_loss": 1.0}\n')
    (tmp_path / ".checkpoint.pt.k1l2d3.tmp").write_bytes(b"partial")
    trainer = MetaTrainer(quick_config(iterations=1), tmp_path)
    trainer.train(progress=False)
    assert not list(tmp_path.glob(".*.tmp")) and len(trainer.rows) == 1


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_an_unwritable_out_is_refused_before_training(tmp_path, capsys, no_training, where):
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" if where == "file" else tmp_path / "file" / "run"
    assert cli_main(train_argv(out)) == 2
    err = capsys.readouterr().err
    assert f"--out {out} cannot be written" in err and "Traceback" not in err


# -- item 4: a kill at any point of a checkpoint resumes exactly -----------------------------------------------------
@pytest.mark.parametrize("moment", ["before", "after"])
@pytest.mark.parametrize("write", ["metrics", "checkpoint"])
def test_a_kill_around_any_write_resumes_exactly(tmp_path, monkeypatch, write, moment):
    """Killed just before or just after the metrics log or the checkpoint of iteration 4 is replaced."""
    straight = MetaTrainer(quick_config(iterations=6, checkpoint_every=2), tmp_path / "straight")
    straight.train(progress=False)

    name = "_write_jsonl" if write == "metrics" else "atomic_write"
    original = getattr(trainer_module, name)
    calls = []

    def dies_at_the_second(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2 and moment == "before":
            raise Killed
        original(*args, **kwargs)
        if len(calls) == 2:
            raise Killed

    monkeypatch.setattr(trainer_module, name, dies_at_the_second)
    with pytest.raises(Killed):
        MetaTrainer(quick_config(iterations=6, checkpoint_every=2), tmp_path / "run").train(progress=False)
    monkeypatch.setattr(trainer_module, name, original)
    resumed = MetaTrainer(quick_config(iterations=6, checkpoint_every=2), tmp_path / "run")
    resumed.train(resume=True, progress=False)

    for key, tensor in straight.best_state.items():
        assert torch.equal(tensor, resumed.best_state[key]), key
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert without_elapsed(rows) == without_elapsed(straight.rows)


KILLED_IN_CHECKPOINT_WRITE = """
import os, signal, sys, torch
from conftest import quick_config
from learned_torch_optim.meta import MetaTrainer
saved = []
def save(obj, handle):
    saved.append(obj)
    if len(saved) == 2:
        handle.write(b"half a checkpoint")
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    torch.serialization.save(obj, handle)
torch.save = save
MetaTrainer(quick_config(iterations=6, checkpoint_every=2), sys.argv[1]).train(progress=False)
"""


def test_kill_9_inside_the_checkpoint_write_resumes_exactly_and_leaves_no_temporary(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_CHECKPOINT_WRITE, str(run)], env=env, timeout=300)
    assert killed.returncode == -9
    assert len(list(run.glob(".checkpoint.pt.*.tmp"))) == 1
    resumed = MetaTrainer(quick_config(iterations=6, checkpoint_every=2), run)
    resumed.train(resume=True, progress=False)
    assert not list(run.glob(".*.tmp"))
    straight = MetaTrainer(quick_config(iterations=6, checkpoint_every=2), tmp_path / "straight")
    straight.train(progress=False)
    for key, tensor in straight.best_state.items():
        assert torch.equal(tensor, resumed.best_state[key]), key
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert without_elapsed(rows) == without_elapsed(straight.rows)


# -- item 7: damaged checkpoints and logs are named ------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("content", ["truncated", "garbage", "tensor"])
def test_a_damaged_checkpoint_is_named(tmp_path, capsys, content):
    out = tmp_path / "run"
    assert cli_main(train_argv(out)) == 0
    checkpoint = out / "checkpoint.pt"
    if content == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    elif content == "garbage":
        checkpoint.write_bytes(bytes(range(256)) * 16)
    else:
        torch.save(torch.ones(3), checkpoint)
    capsys.readouterr()
    assert cli_main(train_argv(out, "--resume")) == 2
    err = capsys.readouterr().err
    assert f"{checkpoint} " in err and "--overwrite instead of --resume" in err


def test_a_bad_metrics_line_is_named(tmp_path):
    MetaTrainer(quick_config(iterations=2), tmp_path).train(progress=False)
    metrics = tmp_path / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: '\{not json' is not a metrics row"):
        MetaTrainer(quick_config(iterations=3), tmp_path).train(resume=True, progress=False)


# -- item 11: resuming with another command --------------------------------------------------------------------------
def test_resuming_below_the_iteration_reached_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(train_argv(out, iterations=4)) == 0
    capsys.readouterr()
    assert cli_main(train_argv(out, "--resume", iterations=3)) == 2
    err = capsys.readouterr().err
    assert "iterations=3" in err and "iteration 4 already" in err and "--iterations 4 or more" in err


def test_the_card_records_every_command_that_ran(tmp_path):
    out = tmp_path / "run"
    first = train_argv(out)
    assert cli_main(first) == 0
    assert cli_main([*first, "--resume"]) == 0  # the same command again: nothing to record
    card = (out / "README.md").read_text()
    assert card.count("learned-torch-optim train") == 1 and "resumed" not in card
    longer = train_argv(out, "--data-dir", str(tmp_path / "moved"), iterations=3)
    assert cli_main([*longer, "--resume"]) == 0
    card = (out / "README.md").read_text()
    commands = card.split("```bash\n")[1].split("```")[0].splitlines()
    assert len(commands) == 3 and commands[1] == "# resumed at iteration 2 with"
    assert "--iterations 2 " in commands[0] and "--data-dir" not in commands[0]
    assert "--iterations 3 " in commands[2] and commands[2].endswith(f"--data-dir {tmp_path / 'moved'}")
    assert "| iterations | 3 |" in card
    assert cli_main([*longer, "--resume"]) == 0  # the last command again: the history stays
    assert (out / "README.md").read_text().split("```bash\n")[1].split("```")[0].splitlines() == commands
