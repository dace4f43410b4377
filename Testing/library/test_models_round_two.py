"""Issue 27, model directories: ``calibrate`` writes its model whole or not at all (under SIGTERM and
SIGKILL at a rename), checks ``--out`` before any scoring and never nests a model in another; the same
volume given twice is refused by ``calibrate`` and ``train``; weights files are checked against the
SHA-256 recorded in ``config.json``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from MAEAnomalyLib.cli.main import main
from MAEAnomalyLib.core.errors import MAEAnomalyError
from MAEAnomalyLib.core.shipped import models_dir
from MAEAnomalyLib.data.synthetic import make_subject
from MAEAnomalyLib.methods.model import AnomalyModel, load_model, save_model
from MAEAnomalyLib.methods.model_config import preset

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = ("mae.safetensors", "classifier.safetensors")
MODEL_FILES = ["classifier.safetensors", "config.json", "mae.safetensors"]


@pytest.fixture
def run_cli(capfd: pytest.CaptureFixture) -> Callable[..., tuple[int, list[str]]]:
    """Runs the CLI in this process: the exit code and the lines on stderr."""
    def run(*args: str) -> tuple[int, list[str]]:
        capfd.readouterr()
        code = main(list(args))
        return code, capfd.readouterr().err.strip().splitlines()

    return run


@pytest.fixture(scope="module")
def heads(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, Path]]:
    """Three healthy generated heads and their brain masks: enough slices at --target-fpr 0.5."""
    root = tmp_path_factory.mktemp("heads")
    return [make_subject(7 + i).write(root, f"head{i}")[:2] for i in range(3)]


def _calibrate_args(model: Path, heads: list, out: Path) -> list[str]:
    return ["calibrate", "--model", str(model), "--images", *[str(h[0]) for h in heads],
            "--masks", *[str(h[1]) for h in heads], "--out", str(out), "--device", "cpu", "--target-fpr", "0.5"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- item 5: the calibrated model appears whole or not at all -----------------------------------------

@pytest.mark.slow  # two calibrations in a subprocess under strace
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_a_signal_at_a_rename_of_calibrate_leaves_the_whole_model_or_nothing(
        sig: str, heads: list, untrained_model_dir: Path, tmp_path: Path) -> None:
    """The issue's run: ``strace -e inject=rename:signal=SIG:when=2``, a real signal at the second rename
    system call. ``--out`` then holds the whole calibrated model (it loads, its weights are the source's),
    or is left as it was (empty), never weights without config.json."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    out = tmp_path / "site"
    out.mkdir()  # an empty --out: what was there before is an empty folder
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}  # no .pyc renames
    result = subprocess.run([strace, "-f", "-o", os.devnull, "-e", "trace=rename,renameat,renameat2",
                             "-e", f"inject=rename,renameat,renameat2:signal={sig}:when=2",
                             sys.executable, "-m", "MAEAnomalyLib", *_calibrate_args(untrained_model_dir, heads, out)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode in (143, -signal.SIGKILL, 128 + signal.SIGKILL), result.stderr
    if sig == "SIGTERM":
        assert "Traceback" not in result.stderr, result.stderr
    left = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    assert left in ([], MODEL_FILES), left
    if left:
        load_model(out)
        assert all(_sha256(out / w) == _sha256(untrained_model_dir / w) for w in WEIGHTS)
    if sig == "SIGTERM":  # a signal Python handles leaves no temporary beside --out either
        assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]
        said = "written whole" if left else "nothing was written"
        assert said in result.stderr.strip().splitlines()[-1], result.stderr


# ---- item 9: --out is checked before any scoring ------------------------------------------------------

@pytest.mark.parametrize("depth", [("site",), ("a", "b", "site")])
def test_calibrate_refuses_an_out_inside_a_model_directory(run_cli: Callable, heads: list, depth: tuple,
                                                           untrained_model_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(untrained_model_dir, model)
    out = model.joinpath(*depth)
    code, lines = run_cli(*_calibrate_args(model, heads, out))
    assert code == 2 and lines[-1] == (f"maeanomaly: error: {out}: --out is inside the model directory {model}; "
                                       "choose a folder outside any model"), lines
    assert sorted(p.name for p in model.iterdir()) == MODEL_FILES  # nothing nested, nothing made


def _unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot create anything in: /sys for root (permissions do not bind it), else
    a folder without write permission."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        if not Path("/sys").is_dir():
            pytest.skip("no unwritable folder for root here")
        return Path("/sys")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    return locked


def test_calibrate_refuses_an_unwritable_out_before_reading_any_volume(run_cli: Callable, untrained_model_dir: Path,
                                                                         tmp_path: Path) -> None:
    """The volume is not an image: a check of --out before scoring names --out, not the volume."""
    volume = tmp_path / "noise.nii.gz"
    volume.write_bytes(b"not an image")
    out = _unwritable(tmp_path) / "maeanomaly-site"
    code, lines = run_cli("calibrate", "--model", str(untrained_model_dir), "--images", str(volume),
                          "--out", str(out), "--device", "cpu")
    assert code == 2 and lines[-1].startswith(f"maeanomaly: error: {out}: cannot write ("), lines
    assert lines[-1].endswith("); nothing was written") and not out.exists()


# ---- item 11: the same volume given twice -------------------------------------------------------------

def test_calibrate_refuses_the_same_volume_twice(run_cli: Callable, heads: list, untrained_model_dir: Path,
                                                 tmp_path: Path) -> None:
    image, mask = heads[0]
    out = tmp_path / "site"
    code, lines = run_cli("calibrate", "--model", str(untrained_model_dir), "--images", *[str(image)] * 4,
                          "--masks", *[str(mask)] * 4, "--out", str(out), "--device", "cpu", "--target-fpr", "0.5")
    assert code == 2 and lines[-1] == (f"maeanomaly: error: {image}: the same volume as entry 1 ({image}): "
                                       "given twice in --images (entries 1 and 2)"), lines
    assert not out.exists()
    copy = tmp_path / "copy.nii.gz"  # another name, the same bytes
    shutil.copyfile(heads[1][0], copy)
    code, lines = run_cli("calibrate", "--model", str(untrained_model_dir), "--images", str(heads[1][0]),
                          str(heads[2][0]), str(copy), "--out", str(out), "--device", "cpu")
    assert code == 2 and lines[-1] == (f"maeanomaly: error: {copy}: the same volume as entry 1 ({heads[1][0]}): "
                                       "given twice in --images (entries 1 and 3)"), lines
    assert not out.exists()


def test_train_refuses_the_same_volume_twice(run_cli: Callable, heads: list, tmp_path: Path) -> None:
    """Otherwise one copy is trained on and the other held out: the threshold is set on training data."""
    image, mask = heads[0]
    out = tmp_path / "model"
    code, lines = run_cli("train", "--images", str(image), str(image), "--masks", str(mask), str(mask),
                          "--out", str(out), "--preset", "tiny", "--mae-epochs", "1", "--classifier-epochs", "1",
                          "--workers", "0", "--device", "cpu")
    assert code == 2 and lines[-1] == (f"maeanomaly: error: {image}: the same volume as entry 1 ({image}): "
                                       "given twice in --images (entries 1 and 2)"), lines
    assert not out.exists()


# ---- item 15: each weights file is the one saved with its config.json --------------------------------

def _saved(directory: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    cfg = preset("tiny")
    cfg.threshold = 0.5
    save_model(AnomalyModel.from_config(cfg), directory)
    return directory


def test_weights_from_another_model_of_the_preset_are_refused(run_cli: Callable, heads: list,
                                                              tmp_path: Path) -> None:
    first, second = _saved(tmp_path / "first", 0), _saved(tmp_path / "second", 1)
    saved = {w: _sha256(first / w) for w in WEIGHTS}
    shutil.copyfile(second / "mae.safetensors", first / "mae.safetensors")
    with pytest.raises(MAEAnomalyError, match="SHA-256") as caught:
        load_model(first)
    assert caught.value.path == str(first / "mae.safetensors")
    code, lines = run_cli("score", "--model", str(first), "--image", str(heads[0][0]), "--mask", str(heads[0][1]),
                          "--out-dir", str(tmp_path / "scores"), "--device", "cpu")
    assert code == 2 and len(lines) == 1 and lines[0] == (
        f"maeanomaly: error: {first / 'mae.safetensors'}: weights do not match config.json: the file's SHA-256 "
        "differs from the one recorded when the model was saved (a file of another model?)"), lines
    assert not (tmp_path / "scores").exists()
    assert json.loads((first / "config.json").read_text())["weights_sha256"] == saved


@pytest.mark.parametrize("value", [["mae.safetensors"], {"mae.safetensors": "00"}, {"other.bin": "0" * 64}])
def test_a_malformed_digest_record_is_a_damaged_model(value: object, untrained_model_dir: Path,
                                                      tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(untrained_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["weights_sha256"] = value
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(MAEAnomalyError, match="model is damaged: weights_sha256 must map"):
        load_model(model)


def test_models_saved_without_digests_still_load(untrained_model_dir: Path, tmp_path: Path) -> None:
    shipped = models_dir() / "brain-t1"
    before = {p.name: _sha256(p) for p in shipped.iterdir()}
    assert "weights_sha256" not in json.loads((shipped / "config.json").read_text())
    load_model(shipped)
    assert {p.name: _sha256(p) for p in shipped.iterdir()} == before  # the shipped files are never rewritten
    older = tmp_path / "older"
    shutil.copytree(untrained_model_dir, older)
    config = json.loads((older / "config.json").read_text())
    del config["weights_sha256"]
    (older / "config.json").write_text(json.dumps(config))
    load_model(older)


def test_calibrate_records_the_digests_of_the_weights_it_copies(run_cli: Callable, heads: list,
                                                                untrained_model_dir: Path, tmp_path: Path) -> None:
    """From a model saved without digests (as the shipped one) too: the calibrated model records them."""
    model = tmp_path / "model"
    shutil.copytree(untrained_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    del config["weights_sha256"]
    (model / "config.json").write_text(json.dumps(config))
    out = tmp_path / "site"
    code, lines = run_cli(*_calibrate_args(model, heads, out))
    assert code == 0, lines
    recorded = json.loads((out / "config.json").read_text())["weights_sha256"]
    assert recorded == {w: _sha256(model / w) for w in WEIGHTS}
    shutil.copyfile(_saved(tmp_path / "other", 1) / "mae.safetensors", out / "mae.safetensors")
    with pytest.raises(MAEAnomalyError, match="SHA-256"):
        load_model(out)
