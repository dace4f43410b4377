"""Training at scale: the slice cache, path lists, two processes under torchrun, SIGTERM and resume,
and the time budget."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from training_runs import child_env, interrupt_after_checkpoint, weights

from MAEAnomalyLib.core.errors import MAEAnomalyError
from MAEAnomalyLib.data.inputs import expand_paths
from MAEAnomalyLib.data.preprocessing import prepare
from MAEAnomalyLib.data.slice_cache import SliceCache, SliceRows
from MAEAnomalyLib.data.synthetic import make_subject, write_cohort
from MAEAnomalyLib.engine.checkpoint import load_state
from MAEAnomalyLib.methods.model import AnomalyModel, load_model
from MAEAnomalyLib.methods.model_config import ModelConfig, preset
from MAEAnomalyLib.training import RunOptions, train
from MAEAnomalyLib.training.pipeline import WORK_DIR

pytestmark = pytest.mark.slow  # trains models or drives a real MRML scene end to end

ROOT = Path(__file__).resolve().parents[2]
# Small and quick, with enough batches per epoch (4 training volumes, ~100 slices, batch 8) for a
# SIGTERM to land inside an epoch.
SETTINGS = ["--preset", "tiny", "--set", "preprocess.image_size=32", "--batch-size", "8", "--mae-epochs", "3",
            "--classifier-epochs", "2", "--device", "cpu"]


def small_config() -> ModelConfig:
    cfg = preset("tiny")
    cfg.preprocess.image_size = 32
    cfg.train.batch_size, cfg.settings.mae_epochs, cfg.settings.classifier_epochs = 8, 3, 2
    cfg.settings.classifier_batch_size = 8  # as --batch-size sets both stages
    return cfg






@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One thread, like the command-line runs here: the thread count changes the order of floating-point
    sums (and so the weights), and two threads on two busy cores are many times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Five healthy subjects: a folder of images and a text file listing their masks."""
    root = tmp_path_factory.mktemp("scale")
    healthy, _ = write_cohort(root / "raw", healthy=5, lesioned=0, seed=3)
    (root / "images").mkdir()
    for image, _, _ in healthy:
        shutil.copy(image, root / "images" / image.name)
    listing = root / "masks.txt"
    listing.write_text("# brain masks, in the order of the images\n"
                       + "".join(f"raw/{m.name}\n" for _, m, _ in healthy))
    return root / "images", listing


@pytest.fixture(scope="module")
def reference(volumes: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted single-process run (workers in the main process)."""
    out = tmp_path_factory.mktemp("reference") / "model"
    images, masks = expand_paths([str(volumes[0])]), expand_paths([str(volumes[1])])
    train(images, out, small_config(), torch.device("cpu"), masks, log=lambda _: None, show_progress=False)
    return out


def test_cache_key_follows_contents_and_settings(tmp_path: Path) -> None:
    subject = make_subject(7)
    image, mask, _ = subject.write(tmp_path, "a")
    cfg = preset("tiny").preprocess
    cache = SliceCache(tmp_path / "cache", cfg, min_pixels=8)
    key = cache.key(image, mask)
    entry = cache.ensure(key, image, mask)
    prepared = prepare(image, cfg, mask, min_pixels=8)
    rows = SliceRows([entry], cfg.min_train_foreground)
    assert len(rows) == int((prepared.foreground_fraction >= cfg.min_train_foreground).sum()) > 0
    assert torch.equal(rows.read(3), prepared.slices[rows.row[3]])
    assert rows.nbytes() == len(rows) * 64 * 64 * 4
    # A copy elsewhere is the same content and finds the entry; nothing is rewritten.
    stamp = entry.slices_path.stat().st_mtime_ns
    shutil.copy(image, tmp_path / "copy.nii.gz")
    assert cache.key(tmp_path / "copy.nii.gz", mask) == key
    assert cache.ensure(key, tmp_path / "copy.nii.gz", mask).slices_path.stat().st_mtime_ns == stamp
    # Another setting, another mask, or an edited image each give a new key, never the stale entry.
    other = SliceCache(tmp_path / "cache", preset("small").preprocess, min_pixels=8)
    assert other.key(image, mask) != key and other.load(other.key(image, mask)) is None
    assert cache.key(image) != key
    make_subject(8).write(tmp_path, "a")
    edited = cache.key(image, mask)
    assert edited != key and cache.load(edited) is None
    assert not torch.equal(SliceRows([cache.ensure(edited, image, mask)], 0.0).read(20), prepared.slices[20])
    with pytest.raises(MAEAnomalyError, match=r"missing\.nii\.gz: file not found"):
        cache.key(tmp_path / "missing.nii.gz")
    # A detached header (.mhd + .raw) is keyed by its voxel file too.
    header = tmp_path / "detached.mhd"
    sitk.WriteImage(make_subject(7).image, str(header))
    text, first = header.read_bytes(), cache.key(header)
    sitk.WriteImage(make_subject(8).image, str(header))
    assert header.read_bytes() == text and cache.key(header) != first


def test_images_accept_folders_and_lists(tmp_path: Path) -> None:
    for name in ("b.nii.gz", "a.nrrd", "notes.csv"):
        (tmp_path / "vols" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "vols" / name).write_bytes(b"")
    (tmp_path / "dicom").mkdir()
    (tmp_path / "dicom" / "IM0001.dcm").write_bytes(b"")
    for series in ("s2", "s1"):
        (tmp_path / "study" / series).mkdir(parents=True)
    (tmp_path / "list.txt").write_text("# cohort\nvols/b.nii.gz\n\n/abs/c.nii.gz\n")
    assert expand_paths([str(tmp_path / "vols"), str(tmp_path / "list.txt"), str(tmp_path / "dicom"),
                         str(tmp_path / "study"), "x.nii.gz"]) == [
        str(tmp_path / "vols" / "a.nrrd"), str(tmp_path / "vols" / "b.nii.gz"),
        str(tmp_path / "vols" / "b.nii.gz"), "/abs/c.nii.gz", str(tmp_path / "dicom"),
        str(tmp_path / "study" / "s1"), str(tmp_path / "study" / "s2"), "x.nii.gz"]
    assert expand_paths(None) is None
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(MAEAnomalyError, match=r"empty\.txt: lists no paths"):
        expand_paths([str(tmp_path / "empty.txt")])


def test_two_processes_train_one_model(volumes: tuple[Path, Path], reference: Path, tmp_path: Path) -> None:
    # Batches of n-1 slices: the first is split unevenly when n-1 is odd, and the second (1 slice) leaves
    # rank 1 without a share, so the weighting of unequal and of empty shares is exercised.
    n = load_model(reference).config.training_summary["train_slices"]
    cfg = small_config()
    cfg.train.batch_size = cfg.settings.classifier_batch_size = n - 1
    images, masks = expand_paths([str(volumes[0])]), expand_paths([str(volumes[1])])
    train(images, tmp_path / "single", cfg, torch.device("cpu"), masks, log=lambda _: None, show_progress=False)
    out = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "MAEAnomalyLib", "train", *SETTINGS, "--batch-size", str(n - 1), "--workers", "0", "--out", str(out),
         "--images", str(volumes[0]), "--masks", str(volumes[1])],
        capture_output=True, encoding="utf-8", cwd=ROOT, env=child_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("MAE epoch 1/3") == 1  # rank 0 alone reports
    model = load_model(out)
    assert model.config.training_summary["processes"] == 2
    ddp, single = weights(out), weights(tmp_path / "single")
    torch.manual_seed(cfg.train.seed)  # the initial weights, as train() draws them
    start = AnomalyModel.from_config(cfg)
    for name in ("mae", "classifier"):
        initial = getattr(start, name).state_dict()
        gap = torch.cat([(ddp[name][k] - single[name][k]).flatten() for k in single[name]])
        moved = torch.cat([(single[name][k] - initial[k]).flatten() for k in single[name]])
        # Equal up to the order of floating-point sums: a small fraction of how far training moved the
        # weights (Adam magnifies rounding differences in parameters whose gradients are near zero).
        assert gap.abs().max() < 1e-3 and gap.norm() < 0.01 * moved.norm(), (name, gap.abs().max(), gap.norm(),
                                                                                moved.norm())
    assert model.config.threshold == pytest.approx(load_model(tmp_path / "single").config.threshold, abs=1e-3)






def test_sigterm_then_resume_gives_the_same_weights(volumes: tuple[Path, Path], reference: Path,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "MAEAnomalyLib", "train", *SETTINGS, "--workers", "1", "--out", str(out),
               "--images", str(volumes[0]), "--masks", str(volumes[1])]
    # Usually the first stop lands inside an epoch; if it lands on a boundary, interrupt the resumed run again.
    mid_epoch = False
    for attempt in range(3):
        stopped = interrupt_after_checkpoint([*command, "--resume"] if attempt else command, out / "checkpoint")
        assert stopped.returncode == 143, stopped.stderr[-3000:]
        assert "stopped by SIGTERM" in stopped.stderr and "--resume" in stopped.stderr
        assert not (out / "config.json").exists()
        state = load_state(out / "checkpoint")
        if state["batch"] > 0 and not state["finished"]:
            mid_epoch = True
            break
    assert mid_epoch, "every SIGTERM landed on an epoch boundary"
    # Resuming with other volumes is refused.
    images = expand_paths([str(volumes[0])])
    with pytest.raises(MAEAnomalyError, match="other training volumes"):
        train(images[1:], out, small_config(), torch.device("cpu"), expand_paths([str(volumes[1])])[1:],
              resume=True, log=lambda _: None, show_progress=False)
    resumed = subprocess.run([*command, "--resume"], capture_output=True, encoding="utf-8", cwd=ROOT, env=child_env(),
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = weights(reference), weights(out)
    for name in a:
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name
    assert load_model(out).config.threshold == load_model(reference).config.threshold
    assert not (out / WORK_DIR).exists() and not (out / "reconstructions").exists()


def test_time_budget_stops_with_a_usable_model(volumes: tuple[Path, Path], tmp_path: Path) -> None:
    cfg = small_config()
    cfg.settings.mae_epochs, cfg.settings.classifier_epochs = 200, 200
    images, masks = expand_paths([str(volumes[0])]), expand_paths([str(volumes[1])])
    started = time.monotonic()
    train(images, tmp_path / "m", cfg, torch.device("cpu"), masks, log=lambda _: None, show_progress=False,
          options=RunOptions(max_minutes=0.001, workers=0))
    assert time.monotonic() - started < 120
    model = load_model(tmp_path / "m")
    summary = model.config.training_summary
    assert summary["stopped_by_time_budget"] == ["mae", "classifier"]
    # Each stage still completes one epoch, so the classifier has learnt something.
    assert len(summary["history"]["mae_loss"]) == 1 and len(summary["history"]["classifier_loss"]) == 1
    assert np.isfinite(model.config.threshold)
