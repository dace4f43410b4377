"""Nothing lost and nothing silently wrong: inputs are never overwritten, failed writes are never
committed, truncated files are refused, finished models are never overwritten, and a checkpoint is
always whole."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MAEAnomalyLib.cli.main import main
from MAEAnomalyLib.core.errors import MAEAnomalyError
from MAEAnomalyLib.core.files import atomic_outputs
from MAEAnomalyLib.data.io import read_volume
from MAEAnomalyLib.data.synthetic import make_subject
from MAEAnomalyLib.engine.checkpoint import load_state, save_state
from MAEAnomalyLib.training import check_out_dir

ROOT = Path(__file__).resolve().parents[2]


def one_line_error(capfd: pytest.CaptureFixture, argv: list[str]) -> str:
    """Runs the command line in this process; returns its only stderr line, after checking exit code 2."""
    capfd.readouterr()
    assert main(argv) == 2
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("maeanomaly: error: "), lines
    return lines[0]


@pytest.fixture
def subject(tmp_path: Path) -> tuple[Path, Path, Path]:
    return make_subject(3, lesion=True).write(tmp_path / "data", "case")


def test_evaluate_never_writes_its_json_over_an_input(capfd: pytest.CaptureFixture, untrained_model_dir: Path,
                                                      subject: tuple[Path, Path, Path]) -> None:
    image, mask, label = subject
    before = label.read_bytes()
    message = one_line_error(capfd, ["evaluate", "--model", str(untrained_model_dir), "--images", str(image),
                                     "--labels", str(label), "--masks", str(mask), "--json", str(label),
                                     "--device", "cpu"])
    assert "would overwrite an input" in message and str(label) in message
    assert label.read_bytes() == before


def test_evaluate_refuses_a_json_path_that_is_a_model_file(capfd: pytest.CaptureFixture, untrained_model_dir: Path,
                                                           subject: tuple[Path, Path, Path]) -> None:
    image, _, label = subject
    config = untrained_model_dir / "config.json"
    before = config.read_bytes()
    message = one_line_error(capfd, ["evaluate", "--model", str(untrained_model_dir), "--images", str(image),
                                     "--labels", str(label), "--json", str(config), "--device", "cpu"])
    assert "would overwrite an input" in message
    assert config.read_bytes() == before


@pytest.mark.slow  # processes of its own, killed or limited
def test_a_failed_image_write_is_never_committed(untrained_model_dir: Path, subject: tuple[Path, Path, Path],
                                                 tmp_path: Path) -> None:
    """A file-size limit lets the CSV through but not the difference map: ITK only warns, so the write
    must be checked; the run ends in one line, exit 2, and none of the three outputs exists."""
    image, mask, _ = subject
    out = tmp_path / "out"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    done = subprocess.run([sys.executable, "-m", "MAEAnomalyLib", "score", "--model", str(untrained_model_dir),
                           "--image", str(image), "--mask", str(mask), "--out-dir", str(out), "--device", "cpu"],
                          capture_output=True, encoding="utf-8", cwd=ROOT, preexec_fn=limit, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("maeanomaly: error: ") and "cannot write" in lines[0], lines
    assert not out.exists() or not any(out.iterdir())


def test_a_failed_text_write_is_one_line_and_commits_nothing(tmp_path: Path) -> None:
    first, blocker = tmp_path / "a.txt", tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(MAEAnomalyError, match="cannot write") as info, atomic_outputs() as writer:
        writer.write_text("one", first)
        writer.write_text("two", blocker / "b.txt")
    assert "\n" not in str(info.value) and str(blocker / "b.txt") in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]  # the first file was not committed


def test_read_back_catches_an_image_that_differs_from_what_was_written(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """What ITK left on disk is read back and compared: here the writer silently writes zeros."""
    image = make_subject(1).image
    real_write = sitk.WriteImage

    def lossy_write(img: sitk.Image, path: str, *args: object, **kwargs: object) -> None:
        zeros = sitk.Image(img.GetSize(), img.GetPixelID())
        zeros.CopyInformation(img)
        real_write(zeros, path, *args, **kwargs)

    monkeypatch.setattr(sitk, "WriteImage", lossy_write)
    with pytest.raises(MAEAnomalyError, match="cannot write"), atomic_outputs() as writer:
        writer.write_image(image, tmp_path / "diff.nii.gz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".mha", ".mhd"])
def test_a_metaimage_that_holds_less_data_than_its_header_promises_is_refused(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"cut{suffix}"
    sitk.WriteImage(make_subject(2).image, str(path), useCompression=False)
    data_file = path if suffix == ".mha" else path.with_suffix(".raw")
    data = data_file.read_bytes()
    data_file.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(MAEAnomalyError, match="image is truncated") as info:
        read_volume(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_nifti_that_holds_less_data_than_its_header_promises_is_refused(tmp_path: Path, suffix: str) -> None:
    image = make_subject(2).image
    whole = tmp_path / "whole.nii"
    sitk.WriteImage(image, str(whole), useCompression=False)
    data = whole.read_bytes()
    cut = data[: len(data) * 2 // 3]
    path = tmp_path / f"cut{suffix}"
    if suffix == ".nii.gz":
        import gzip

        path.write_bytes(gzip.compress(cut))  # a whole gzip stream around a truncated file
    else:
        path.write_bytes(cut)
    with pytest.raises(MAEAnomalyError, match="truncated") as info:
        read_volume(path)
    assert str(path) in str(info.value)
    assert np.array_equal(sitk.GetArrayFromImage(read_volume(whole)), sitk.GetArrayFromImage(image))


def test_a_finished_model_is_never_trained_over(capfd: pytest.CaptureFixture, untrained_model_dir: Path,
                                                subject: tuple[Path, Path, Path]) -> None:
    """``--resume`` on a finished model (its checkpoint removed or not) would start afresh over it."""
    before = {p.name: p.read_bytes() for p in untrained_model_dir.iterdir() if p.is_file()}
    with pytest.raises(MAEAnomalyError, match="finished model"):
        check_out_dir(untrained_model_dir, resume=True)
    message = one_line_error(capfd, ["train", "--preset", "tiny", "--resume", "--out", str(untrained_model_dir),
                                     "--images", str(subject[0]), str(subject[0]), "--device", "cpu"])
    assert "finished model" in message
    assert {p.name: p.read_bytes() for p in untrained_model_dir.iterdir() if p.is_file()} == before


def test_checkpoint_is_one_file_and_a_stale_temporary_is_ignored_then_removed(tmp_path: Path) -> None:
    directory = tmp_path / "checkpoint"
    save_state({"epoch": 1, "weights": torch.full((4,), 1.0)}, directory)
    assert [p.name for p in directory.iterdir()] == ["state.safetensors"]
    # What a kill in the middle of the next save leaves: a partial temporary file beside the checkpoint.
    (directory / ".state.safetensors.abc.tmp.safetensors").write_bytes(b"partial")
    state = load_state(directory)
    assert state["epoch"] == 1 and torch.equal(state["weights"], torch.full((4,), 1.0))
    save_state({"epoch": 2, "weights": torch.full((4,), 2.0)}, directory)
    assert [p.name for p in directory.iterdir()] == ["state.safetensors"]
    assert load_state(directory)["epoch"] == 2


_SAVER = """
import sys, torch
from MAEAnomalyLib.engine.checkpoint import save_state
epoch = 0
while True:
    epoch += 1
    save_state({"epoch": epoch, "weights": torch.full((64, 1024), float(epoch)),
                "optimizer": {"step": torch.tensor(float(epoch))}}, sys.argv[1])
    print(epoch, flush=True)
"""


@pytest.mark.slow  # processes of its own, killed or limited
def test_sigkill_at_any_moment_leaves_a_whole_checkpoint(tmp_path: Path) -> None:
    """Weights and the state that goes with them are committed in one rename: after a SIGKILL at a random
    moment the checkpoint on disk is the last one saved whole, never the weights of one save with the
    position of another."""
    directory = tmp_path / "checkpoint"
    rng = np.random.default_rng(0)
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", _SAVER, str(directory)], stdout=subprocess.PIPE,
                                 encoding="utf-8", cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert child.stdout is not None
        first = int(child.stdout.readline())  # at least one save is whole
        time.sleep(float(rng.uniform(0.0, 0.3)))
        child.send_signal(signal.SIGKILL)
        child.wait()
        state = load_state(directory)
        epoch = state["epoch"]
        assert epoch >= first
        assert torch.equal(state["weights"], torch.full((64, 1024), float(epoch)))
        assert float(state["optimizer"]["step"]) == epoch
        json.dumps(epoch)  # a plain int from the JSON structure


def test_scores_do_not_depend_on_the_batch_size(untrained_model_dir: Path) -> None:
    """Each slice's random masks come from the seed and the slice alone, so batching never changes a result."""
    from MAEAnomalyLib.methods.model import load_model
    from MAEAnomalyLib.scoring.scores import score_image

    model = load_model(untrained_model_dir)
    model.config.settings.score_reconstructions = 2  # several reconstructions share a batch too
    subject = make_subject(4, lesion=True)
    tables = [score_image(model, subject.image, subject.brain_mask, batch_size=b).table for b in (2, 7, 64)]
    for other in tables[1:]:
        for column in ("score", "mae_l1", "ssim"):
            np.testing.assert_allclose(other[column], tables[0][column], rtol=0, atol=1e-6)
        assert np.array_equal(other["abnormal"], tables[0]["abnormal"])


def test_outputs_and_cache_entries_follow_the_users_umask(tmp_path: Path) -> None:
    from MAEAnomalyLib.data.slice_cache import SliceCache
    from MAEAnomalyLib.methods.model import AnomalyModel, save_model
    from MAEAnomalyLib.methods.model_config import preset

    subject = make_subject(5)
    image = subject.write(tmp_path / "data", "head")[0]
    previous = os.umask(0o002)  # a group-shared setting
    try:
        with atomic_outputs() as writer:
            writer.write_text("x", tmp_path / "out" / "a.csv")
            writer.write_image(subject.image, tmp_path / "out" / "b.nii.gz")
        cache = SliceCache(tmp_path / "cache", preset("tiny").preprocess, 8)
        entry = cache.ensure(cache.key(image), image)
        save_model(AnomalyModel.from_config(preset("tiny")), tmp_path / "model")  # safetensors writes 0600 itself
    finally:
        os.umask(previous)
    for path in (tmp_path / "out" / "a.csv", tmp_path / "out" / "b.nii.gz", *(tmp_path / "model").iterdir()):
        assert path.stat().st_mode & 0o777 == 0o664, oct(path.stat().st_mode)
    assert entry.directory.stat().st_mode & 0o777 == 0o775


@pytest.mark.slow  # processes of its own, killed or limited
def test_a_full_disk_while_training_is_one_line_and_leaves_nothing(cohort: dict, tmp_path: Path) -> None:
    """A file-size limit stops the slice cache's first write: one line, exit 2, and no output folder."""
    out = tmp_path / "model"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))

    images = [str(h[0]) for h in cohort["healthy"][:2]]
    done = subprocess.run([sys.executable, "-m", "MAEAnomalyLib", "train", "--preset", "tiny", "--out", str(out),
                           "--images", *images, "--workers", "0", "--device", "cpu"],
                          capture_output=True, encoding="utf-8", cwd=ROOT, preexec_fn=limit, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = [ln for ln in done.stderr.splitlines() if ln.strip() and not ln.startswith(("method ", "preparing"))]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "cannot write (" in lines[0] and "file-size limit" in lines[0], lines
    assert not out.exists()
