"""Bad input: one line on stderr naming the file and the problem, exit code 2, no outputs."""

from __future__ import annotations

import gzip
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MAEAnomalyLib.cli.main import main
from MAEAnomalyLib.data.synthetic import make_subject

ROOT = Path(__file__).resolve().parents[2]


def run_process(*args: str) -> subprocess.CompletedProcess:
    """The command line in a process of its own, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "MAEAnomalyLib", *args], capture_output=True, encoding="utf-8",
                          cwd=ROOT, timeout=300)


@pytest.fixture
def run_cli(capfd: pytest.CaptureFixture) -> Callable[..., subprocess.CompletedProcess]:
    """The command line's ``main`` in this process (seconds faster than a new process each time), with
    everything written to the stdout and stderr file descriptors captured, ITK's own messages included."""
    def run(*args: str) -> subprocess.CompletedProcess:
        capfd.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def bad_inputs(tmp: Path) -> dict[str, tuple[Path, Path | None, str]]:
    """name -> (image, mask or None, expected words in the message)."""
    good = make_subject(11)
    image_path = write(good.image, tmp / "good.nii.gz")
    truncated = tmp / "truncated.nii.gz"
    truncated.write_bytes(image_path.read_bytes()[: image_path.stat().st_size // 2])
    not_gzip = tmp / "garbage.nii.gz"
    not_gzip.write_bytes(gzip.compress(b"not an image at all" * 10))
    arr = sitk.GetArrayFromImage(good.image)
    nan = arr.copy()
    nan[5, 5, 5] = np.nan
    inf = arr.copy()
    inf[3, 3, 3] = np.inf
    shifted = sitk.Image(good.brain_mask)
    shifted.SetOrigin((1.0, 2.0, 3.0))
    small = sitk.GetImageFromArray(np.random.default_rng(0).random((10, 4, 4)).astype(np.float32))
    vector = sitk.Compose(good.image, good.image)
    four_d = sitk.JoinSeries([good.image, good.image])
    return {
        "missing": (tmp / "nope.nii.gz", None, "file not found"),
        "truncated": (truncated, None, "cannot read"),
        "garbage": (not_gzip, None, "cannot read"),
        "2d": (write(good.image[:, :, 10], tmp / "slice.nii.gz"), None, "2D"),
        "4d": (write(four_d, tmp / "four.nii.gz"), None, "4D"),
        "vector": (write(vector, tmp / "vector.nii.gz"), None, "2 components"),
        "nan": (write(sitk.GetImageFromArray(nan), tmp / "nan.nii.gz"), None, "NaN or infinite"),
        "inf": (write(sitk.GetImageFromArray(inf), tmp / "inf.nrrd"), None, "NaN or infinite"),
        "constant": (write(sitk.GetImageFromArray(np.full((8, 32, 32), 3.0, np.float32)), tmp / "c.nii.gz"),
                     None, "constant"),
        "too_small": (write(small, tmp / "small.nii.gz"), None, "smaller than one 8x8 patch"),
        "mask_grid": (image_path, write(shifted, tmp / "shifted_mask.nii.gz"), "grid differs"),
        "mask_size": (image_path, write(good.image[:, :, :20], tmp / "short_mask.nii.gz"), "grid differs"),
        "mask_missing": (image_path, tmp / "nomask.nii.gz", "file not found"),
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("bad")
    return tmp, bad_inputs(tmp)


@pytest.mark.parametrize("case", ["missing", "truncated", "garbage", "2d", "4d", "vector", "nan", "inf",
                                  "constant", "too_small", "mask_grid", "mask_size", "mask_missing"])
def test_score_rejects_bad_input(run_cli: Callable, case: str, inputs: tuple[Path, dict],
                                 untrained_model_dir: Path) -> None:
    tmp, cases = inputs
    image, mask, words = cases[case]
    out = tmp / f"out_{case}"
    args = ["score", "--model", str(untrained_model_dir), "--image", str(image), "--out-dir", str(out),
            "--device", "cpu"]
    if mask is not None:
        args += ["--mask", str(mask)]
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    named = mask if case.startswith("mask") else image
    assert lines[0].startswith(f"maeanomaly: error: {named}: "), lines[0]
    assert words in lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_train_rejects_bad_volume_without_writing(run_cli: Callable, inputs: tuple[Path, dict], cohort: dict) -> None:
    tmp, cases = inputs
    out = tmp / "model_out"
    result = run_cli("train", "--preset", "tiny", "--out", str(out), "--device", "cpu",
                     "--images", str(cohort["healthy"][0][0]), str(cases["nan"][0]))
    assert result.returncode == 2
    assert f"{cases['nan'][0]}: image contains NaN" in result.stderr
    assert not out.exists()


def test_evaluate_rejects_label_on_another_grid(run_cli: Callable, inputs: tuple[Path, dict],
                                                untrained_model_dir: Path) -> None:
    tmp, cases = inputs
    image, mask, _ = cases["mask_grid"]
    result = run_cli("evaluate", "--model", str(untrained_model_dir), "--images", str(image), "--labels", str(mask),
                     "--device", "cpu", "--json", str(tmp / "m.json"))
    assert result.returncode == 2
    assert f"{mask}: label map grid differs" in result.stderr
    assert not (tmp / "m.json").exists()


def damaged_models(tmp: Path, model: Path) -> dict[str, tuple[Path, str]]:
    def copy(name: str) -> Path:
        target = tmp / name
        shutil.copytree(model, target)
        return target

    bad_json = copy("bad_json")
    (bad_json / "config.json").write_text("{ not json")
    old = copy("old_format")
    (old / "config.json").write_text((old / "config.json").read_text().replace('"format_version": 2',
                                                                                '"format_version": 99'))
    truncated = copy("truncated_weights")
    data = (truncated / "mae.safetensors").read_bytes()
    (truncated / "mae.safetensors").write_bytes(data[: len(data) // 3])
    missing = copy("missing_weights")
    (missing / "classifier.safetensors").unlink()
    resized = copy("mismatch")
    (resized / "config.json").write_text((resized / "config.json").read_text().replace('"depth": 4',
                                                                                       '"depth": 5'))
    pkl = tmp / "model.pkl"
    pkl.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    return {
        "missing_dir": (tmp / "no_model", "model directory not found"),
        "bad_json": (bad_json / "config.json", "not valid JSON"),
        "old_format": (old / "config.json", "incompatible"),
        "truncated": (truncated / "mae.safetensors", "unreadable weights"),
        "missing_weights": (missing / "classifier.safetensors", "weights file is missing"),
        "mismatch": (resized / "mae.safetensors", "do not match config.json"),
        "pickle": (pkl, "is a pickle file"),
        "empty_dir": (tmp, "no config.json"),
    }


@pytest.mark.parametrize("case", ["missing_dir", "bad_json", "old_format", "truncated", "missing_weights",
                                  "mismatch", "pickle", "empty_dir"])
def test_score_rejects_bad_model(run_cli: Callable, case: str, tmp_path: Path, untrained_model_dir: Path,
                                 cohort: dict) -> None:
    models = damaged_models(tmp_path, untrained_model_dir)
    path, words = models[case]
    model_arg = path.parent if path.name.endswith((".json", ".safetensors")) else path
    result = run_cli("score", "--model", str(model_arg), "--image", str(cohort["healthy"][0][0]),
                     "--out-dir", str(tmp_path / "out"), "--device", "cpu")
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line
    assert line.startswith(f"maeanomaly: error: {path}: "), line
    assert words in line
    assert not (tmp_path / "out").exists()


def test_pickle_model_is_never_unpickled(tmp_path: Path, cohort: dict) -> None:
    marker = tmp_path / "was_unpickled"
    evil = tmp_path / "evil.pt"
    # A pickle whose loading would create the marker file.
    evil.write_bytes(pickle.dumps(type("X", (), {"__reduce__": lambda self: (marker.touch, ())})()))
    result = run_process("score", "--model", str(evil), "--image", str(cohort["healthy"][0][0]),
                         "--out-dir", str(tmp_path / "out"))
    assert result.returncode == 2 and "pickle" in result.stderr
    assert not marker.exists()


def test_cuda_without_gpu_is_a_clear_error(run_cli: Callable, untrained_model_dir: Path, cohort: dict,
                                           tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = run_cli("score", "--model", str(untrained_model_dir), "--image", str(cohort["healthy"][0][0]),
                     "--out-dir", str(tmp_path / "out"), "--device", "cuda")
    assert result.returncode == 2
    assert "no CUDA GPU" in result.stderr


@pytest.mark.parametrize(("setting", "words"), [
    ("mae_classifier.classifier_selection=best", "choose last or best_validation"),
    ("mae_classifier.pseudo_abnormal.beta_mode=voxel", "choose box or pixel"),
    ("mae_classifier.classifier.masked_input=maybe", "'maybe' is not a valid bool"),
    ("preprocess.crop_margin=-2", "must be at least 0 and below 1000000"),
    ("mae_classifier.score_reconstructions=0", "must be at least 1 and below 101"),
    ("mae_classifier.classifier.global_pool=mean", "choose token, avg, max or avgmax"),
    # The names of format 1 are aliases of the above: their errors name the setting as it was given.
    ("train.classifier_selection=best", "choose last or best_validation"),
    ("pseudo_abnormal.beta_mode=voxel", "choose box or pixel"),
    ("classifier.masked_input=maybe", "'maybe' is not a valid bool"),
    ("train.score_reconstructions=0", "must be at least 1 and below 101"),
    ("classifier.global_pool=mean", "choose token, avg, max or avgmax"),
])
def test_train_rejects_bad_setting_without_writing(run_cli: Callable, cohort: dict, tmp_path: Path, setting: str,
                                                   words: str) -> None:
    out = tmp_path / "model_out"
    result = run_cli("train", "--preset", "tiny", "--out", str(out), "--device", "cpu", "--set", setting,
                     "--images", *[str(h[0]) for h in cohort["healthy"][:2]])
    assert result.returncode == 2
    assert result.stderr.strip() == f"maeanomaly: error: --set {setting}: {words}"
    assert not out.exists()
