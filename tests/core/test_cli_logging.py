"""Library code logs; the CLI shows those lines on the console (info on stdout, warnings on stderr), as it did when
the library printed them, and leaves the `trainer` logger as it found it."""

from __future__ import annotations

import logging

from generalist_trainer.trainer.checkpoint import LAST, previous_version
from generalist_trainer.trainer.cli import main
from generalist_trainer.trainer.data import build_train_loader, load_splits

from .test_checkpoint_resume import TINY, tiny_config


def test_the_cli_shows_library_log_lines_and_restores_the_logger(tmp_path, capsys):
    logger = logging.getLogger("generalist_trainer")
    before = (logger.level, list(logger.handlers))
    run = tmp_path / "run"
    assert main(["train", "--no-eval", *TINY, f"train.out_dir={run}", "train.max_steps=2",
                 "train.checkpoint_every_steps=1"]) == 0
    assert "data loader: cpu (auto: the device is cpu, not CUDA)" in capsys.readouterr().out.splitlines()
    last = run / LAST
    last.write_bytes(last.read_bytes()[:-10])  # last.pt damaged: resuming falls back to last.prev.pt and warns
    assert main(["train", "--resume", str(run), "--no-eval"]) == 0
    captured = capsys.readouterr()
    warning = f"checkpoint {last} rejected, using the previous version {previous_version(last)}"
    assert warning in captured.err and warning not in captured.out
    assert (logger.level, list(logger.handlers)) == before


def test_the_library_alone_prints_none_of_its_info_lines(tmp_path, capsys, caplog):
    cfg = tiny_config(tmp_path)
    splits = load_splits(cfg.data, cfg.train.seed)
    with caplog.at_level(logging.INFO, logger="generalist_trainer"):
        build_train_loader(cfg.data, splits.train, device="cpu", seed=0, padding=0, flip=False)
    assert "data loader: cpu" in caplog.text  # a record for whoever configures logging
    assert "data loader" not in capsys.readouterr().out
