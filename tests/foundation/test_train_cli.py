"""``tools/train.py`` with mmseg's flags on the tiny ClipSAM config: train, stop, ``--resume``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from mmengine.config import Config

from aerialseg.engine import safe_torch_load, train_main
from aerialseg.engine.launch import apply_resume, enable_amp, load_config
from aerialseg.models.tiny import write_tiny_aerial_d, write_tiny_checkpoints

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "clipsam" / "clipsam-tiny_aerial-d.py"


@pytest.mark.slow
def test_train_then_resume_through_the_command_line(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)  # the tiny config's paths are relative, as in a checkout
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    write_tiny_checkpoints()
    write_tiny_aerial_d()

    common = [str(TINY_CONFIG), "--work-dir", "work"]
    options = ["--cfg-options", "default_hooks.checkpoint.interval=2", "train_cfg.val_interval=100"]
    first = train_main([*common, *options, "train_cfg.max_iters=2"])
    assert first.iter == 2
    assert "LOCAL_RANK" not in os.environ  # a single-process run must not look distributed
    assert safe_torch_load(tmp_path / "work" / "iter_2.pth")["meta"]["iter"] == 2
    capfd.readouterr()

    resumed = train_main([*common, "--resume", *options, "train_cfg.max_iters=4"])
    log = "".join(capfd.readouterr())
    assert "resumed" in log.lower() and "iter_2.pth" in log
    assert resumed.iter == 4
    final = safe_torch_load(tmp_path / "work" / "iter_4.pth")
    assert final["meta"]["iter"] == 4
    # the sha256 of the frozen pretrained files travels with every checkpoint
    recorded = final["meta"]["pretrained_files"]
    assert (
        recorded["sam.checkpoint"]["sha256"]
        == hashlib.sha256((tmp_path / "checkpoints/tiny/sam_tiny.pth").read_bytes()).hexdigest()
    )
    assert recorded["vlm.pretrained"]["resolved"] == str(tmp_path / "checkpoints/tiny/siglip")
    # The message hub carries the losses of both runs: 2 logged before the stop, 2 after.
    loss_history = final["message_hub"]["log_scalars"]["train/loss"]
    assert len(loss_history.data[0]) == 4


def test_amp_flag_on_a_cpu_machine_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="--amp needs a GPU"):
        train_main([str(TINY_CONFIG), "--amp", "--work-dir", str(tmp_path / "w")])
    assert not (tmp_path / "w").exists()


def test_amp_switches_the_optim_wrapper(monkeypatch):
    monkeypatch.setattr("mmengine.device.get_device", lambda: "cuda")
    cfg = Config(dict(optim_wrapper=dict(type="OptimWrapper", optimizer=dict(type="AdamW"))))
    enable_amp(cfg)
    assert cfg.optim_wrapper.type == "AmpOptimWrapper"
    assert cfg.optim_wrapper.loss_scale == "dynamic"

    cfg = Config(dict(optim_wrapper=dict(type="DeepSpeedOptimWrapper")))
    with pytest.raises(ValueError, match="DeepSpeedOptimWrapper"):
        enable_amp(cfg)


def test_config_overrides_and_work_dir_rules(tmp_path):
    cfg = load_config(str(TINY_CONFIG), cfg_options={"train_cfg.max_iters": 7})
    assert cfg.train_cfg.max_iters == 7
    assert cfg.work_dir == os.path.join("work_dirs", "clipsam-tiny_aerial-d")
    assert load_config(str(TINY_CONFIG), work_dir=str(tmp_path)).work_dir == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="no_such_config.py"):
        load_config(str(tmp_path / "no_such_config.py"))


def test_resume_flag_forms(tmp_path):
    cfg = Config(dict(resume=False, load_from="pretrained.pth"))
    apply_resume(cfg, "auto")
    assert cfg.resume is True and cfg.load_from is None

    checkpoint = tmp_path / "iter_10.pth"
    checkpoint.write_bytes(b"x")
    apply_resume(cfg, str(checkpoint))
    assert cfg.resume is True and cfg.load_from == str(checkpoint)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        apply_resume(cfg, str(tmp_path / "missing.pth"))


def test_missing_files_are_listed_at_once_before_any_config_dump(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # none of the tiny config's relative files exist here
    monkeypatch.delenv("AERIALSEG_CHECKPOINTS", raising=False)
    with pytest.raises(SystemExit) as exit_:
        train_main([str(TINY_CONFIG), "--work-dir", "work"])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    error = captured.err.strip()
    assert len(error.splitlines()) == 1 and captured.out == ""  # one line, no config dump
    for missing in (
        "checkpoints/tiny/siglip",
        "checkpoints/tiny/sam_tiny.pth",
        "data/tiny_aerial_d",
    ):
        assert missing in error
    assert "AERIALSEG_CHECKPOINTS" in error and not (tmp_path / "work").exists()


def test_pretrained_files_are_found_under_the_checkpoints_root(tmp_path, monkeypatch):
    from aerialseg.engine.launch import check_run_files

    root = tmp_path / "shared-checkpoints"
    paths = write_tiny_checkpoints(root)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AERIALSEG_CHECKPOINTS", str(root))
    cfg = load_config(str(TINY_CONFIG))
    check_run_files(cfg, loaders=())
    assert cfg.model.vlm.pretrained == paths.vlm_path
    assert cfg.model.sam.checkpoint == paths.sam_path


@pytest.mark.parametrize(
    "option, message",
    [
        ("trian_cfg.max_iters=3", "'trian_cfg' (did you mean 'train_cfg'?)"),
        ("nonsense=1", "'nonsense'"),
    ],
)
def test_unknown_top_level_cfg_options_are_refused(tmp_path, capsys, option, message):
    with pytest.raises(SystemExit) as exit_:
        train_main([str(TINY_CONFIG), "--work-dir", str(tmp_path / "w"), "--cfg-options", option])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert message in error and "unknown top-level config key" in error
    # keys the runner reads are accepted although the config does not set them
    assert load_config(str(TINY_CONFIG), cfg_options={"resume": True}).resume is True


def test_seed_flag_sets_the_runner_randomness(tmp_path, monkeypatch):
    captured = {}

    def fake_runner(cfg):
        captured.update(cfg.randomness)
        raise SystemExit(0)

    monkeypatch.setattr("aerialseg.engine.launch.check_run_files", lambda cfg, loaders: None)
    monkeypatch.setattr("aerialseg.engine.launch.build_runner", fake_runner)
    with pytest.raises(SystemExit):
        train_main(
            [str(TINY_CONFIG), "--seed", "7", "--deterministic", "--work-dir", str(tmp_path)]
        )
    assert captured == {"seed": 7, "deterministic": True}


def test_train_script_is_a_thin_shell_with_mmsegs_flags(capsys):
    # Its command-line runs (dist_train.sh -> torchrun -> tools/train.py, found through the
    # project's Python) are in tests/models/test_training.py::test_ddp_gloo_two_processes.
    assert "from aerialseg.engine import train_main" in (REPO / "tools" / "train.py").read_text()
    with pytest.raises(SystemExit) as exit_:
        train_main(["--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    for flag in ("--work-dir", "--resume", "--amp", "--cfg-options", "--launcher", "--seed"):
        assert flag in shown


def test_config_text_is_yapfs_formatting_computed_once(monkeypatch):
    from yapf.yapflib.yapf_api import FormatCode

    from aerialseg.engine import launch

    source = "model=dict(type='ClipSAM',sizes=[1,2,3]); train_cfg=dict(max_iters=5)\n"
    style = dict(based_on_style="pep8", column_limit=79)  # any style: the cache keys on it
    referee = FormatCode(source, style_config=style)
    calls = []

    def counting_format_code(source, **options):
        calls.append(source)
        return FormatCode(source, **options)

    monkeypatch.setattr(launch, "_yapf_format_code", counting_format_code)
    launch._format_config_text.cache_clear()
    assert launch.format_code_once(source, style_config=style) == referee
    assert launch.format_code_once(source, style_config=dict(style)) == referee
    other = launch.format_code_once(source, style_config=dict(style, column_limit=20))
    assert other == FormatCode(source, style_config=dict(style, column_limit=20)) != referee
    assert len(calls) == 2  # the repeat came from the cache; another style did not
    # mmengine's Config.pretty_text goes through it: the same text as before, formatted once
    cfg = load_config(str(TINY_CONFIG), cfg_options={"train_cfg.max_iters": 5})
    calls.clear()
    launch._format_config_text.cache_clear()
    assert cfg.pretty_text == cfg.pretty_text and len(calls) == 1
    assert "max_iters=5" in cfg.pretty_text
    launch._format_config_text.cache_clear()  # nothing formatted by the counter stays cached
