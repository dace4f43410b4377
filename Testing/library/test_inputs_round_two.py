"""Inputs as an unlucky user gives them (issue 27, items 4, 12, 14 and 16): FIFOs, folders whose sorted
order pairs the wrong files, links (broken, looping, or to a file also given), unreadable files, list
files with a byte-order mark, and names that differ only in case deep in a tree."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import SimpleITK as sitk

from MAEAnomalyLib.cli.main import main
from MAEAnomalyLib.core.errors import MAEAnomalyError
from MAEAnomalyLib.data.inputs import expand_paths, sources
from MAEAnomalyLib.data.synthetic import make_subject
from MAEAnomalyLib.scoring.cohort import cohort_volumes
from MAEAnomalyLib.scoring.cohort_table import output_names, read_cohort_csv

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_cli(capfd: pytest.CaptureFixture) -> Callable[..., tuple[int, str]]:
    """``main`` in this process: (exit code, stderr)."""
    def run(*args: str) -> tuple[int, str]:
        capfd.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code
        return code, capfd.readouterr().err

    return run


@contextlib.contextmanager
def never_waiting_on(fifo: Path) -> Iterator[None]:
    """Opens the FIFO's writing end now and then while the block runs, so that code which opens it for
    reading gets an empty file instead of waiting for ever: a regression fails the test, never hangs it."""
    done = threading.Event()

    def unblock() -> None:
        while not done.wait(2.0):
            with contextlib.suppress(OSError):  # ENXIO: nobody is reading it now
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=unblock, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _image(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(make_subject(seed).image, str(path), useCompression=True)
    return path


def _error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("maeanomaly: error:")]
    assert len(lines) == 1, err
    return lines[0]


# --- item 4: a FIFO is refused, never waited for ---------------------------------------------------------

def test_a_fifo_as_any_input_is_refused_in_one_line(untrained_model_dir: Path, tmp_path: Path,
                                                    run_cli: Callable) -> None:
    image = _image(tmp_path / "case.nii.gz")
    fifo = tmp_path / "pipe.nii.gz"
    os.mkfifo(fifo)
    listed = tmp_path / "list.txt"
    os.mkfifo(listed)
    model = str(untrained_model_dir)
    cases = {
        "--image": (["score", "--image", str(fifo)], fifo),
        "--brain-mask": (["score", "--image", str(image), "--brain-mask", str(fifo)], fifo),
        "--mask": (["score", "--image", str(image), "--mask", str(fifo)], fifo),
        "--labels": (["evaluate", "--images", str(image), "--labels", str(fifo), "--brain-mask", "none"], fifo),
        "a list file": (["score", "--images", str(listed)], listed),
    }
    for flag, (argv, culprit) in cases.items():
        out = tmp_path / f"out{len(flag)}"
        with never_waiting_on(fifo), never_waiting_on(listed):
            code, err = run_cli(*argv, "--model", model, "--device", "cpu",
                                *(["--out-dir", str(out)] if argv[0] == "score" else []))
        assert code == 2, (flag, err)
        assert _error_line(err) == (f"maeanomaly: error: {culprit}: is a named pipe (FIFO), not a regular file "
                                    "or a folder"), flag
        assert not out.exists(), flag


# --- item 12: folders pair by name, lists in the order given --------------------------------------------

def _named_files(folder: Path, names: list[str]) -> Path:
    """Empty files: pairing looks at names only."""
    folder.mkdir(parents=True)
    for name in names:
        (folder / f"{name}.nii.gz").write_bytes(b"")
    return folder


def test_folders_of_images_and_masks_pair_by_name(tmp_path: Path) -> None:
    # Sorted, the images are sub1, sub10, sub2 and the masks sub10_mask, sub1_mask, sub2_mask.
    images = _named_files(tmp_path / "images", ["sub1", "sub10", "sub2"])
    masks = _named_files(tmp_path / "masks", ["sub1_mask", "sub10_mask", "sub2_mask"])
    labels = _named_files(tmp_path / "labels", ["sub10-seg", "sub1_labels", "sub2"])

    def stem(path: object) -> str:
        return Path(str(path)).name.split(".")[0]

    volumes = cohort_volumes(expand_paths([str(images)]), expand_paths([str(masks)]))
    assert [(stem(v.image), stem(v.mask)) for v in volumes] == [
        ("sub1", "sub1_mask"), ("sub10", "sub10_mask"), ("sub2", "sub2_mask")]
    # train and calibrate expand first; evaluate hands its arguments over as given.
    for given in ((expand_paths([str(images)]), expand_paths([str(masks)]), expand_paths([str(labels)])),
                  ([str(images)], [str(masks)], [str(labels)])):
        assert [tuple(stem(p) for p in s) for s in sources(*given)] == [
            ("sub1", "sub1_mask", "sub1_labels"), ("sub10", "sub10_mask", "sub10-seg"), ("sub2", "sub2_mask", "sub2")]
    # Listed one by one, the user's order stands, whatever the names.
    given = [str(images / "sub1.nii.gz"), str(images / "sub2.nii.gz")]
    assert [s[1].name for s in sources(given, [str(masks / "sub2_mask.nii.gz"), str(masks / "sub1_mask.nii.gz")])
            ] == ["sub2_mask.nii.gz", "sub1_mask.nii.gz"]


def test_folders_whose_names_disagree_are_refused_in_one_line(untrained_model_dir: Path, tmp_path: Path,
                                                              run_cli: Callable) -> None:
    images = _named_files(tmp_path / "images", ["sub1", "sub10", "sub2"])
    masks = _named_files(tmp_path / "masks", ["sub1_mask", "sub3_mask", "sub2_mask"])
    out = tmp_path / "out"
    code, err = run_cli("score", "--model", str(untrained_model_dir), "--images", str(images), "--masks", str(masks),
                        "--out-dir", str(out), "--device", "cpu")
    assert code == 2 and not out.exists(), err
    assert _error_line(err).startswith(f"maeanomaly: error: {masks / 'sub3_mask.nii.gz'}: no image of --images has "
                                       "this name; with a folder, --masks pair with --images by name")
    labels = _named_files(tmp_path / "labels", ["sub1_label", "sub10_label"])
    code, err = run_cli("evaluate", "--model", str(untrained_model_dir), "--images", str(images), "--labels",
                        str(labels), "--device", "cpu")
    assert code == 2, err
    assert _error_line(err).startswith(f"maeanomaly: error: {images / 'sub2.nii.gz'}: no file of --labels has "
                                       "this image's name")


# --- item 14: links and FIFOs among a cohort's inputs ---------------------------------------------------

def test_folder_expansion_keeps_what_cannot_be_read(tmp_path: Path) -> None:
    folder = tmp_path / "cohort"
    _image(folder / "case.nii.gz")
    (folder / "broken.nii.gz").symlink_to("gone.nii.gz")
    (folder / "loop.nii.gz").symlink_to("loop.nii.gz")
    os.mkfifo(folder / "pipe.nii.gz")
    (folder / "notes.md").write_text("not a volume")
    assert [Path(p).name for p in expand_paths([str(folder)])] == [
        "broken.nii.gz", "case.nii.gz", "loop.nii.gz", "pipe.nii.gz"]


def test_a_link_loop_broken_link_or_fifo_is_its_volumes_row(untrained_model_dir: Path, tmp_path: Path,
                                                           run_cli: Callable) -> None:
    folder = tmp_path / "cohort"
    _image(folder / "case.nii.gz")
    (folder / "broken.nii.gz").symlink_to("gone.nii.gz")
    (folder / "loop.nii.gz").symlink_to("loop.nii.gz")
    os.mkfifo(folder / "pipe.nii.gz")
    out = tmp_path / "out"
    with never_waiting_on(folder / "pipe.nii.gz"):
        code, err = run_cli("score", "--model", str(untrained_model_dir), "--images", str(folder), "--out-dir",
                            str(out), "--device", "cpu", "--workers", "0", "--brain-mask", "none")
    assert code == 3, err
    status = {Path(r["image"]).name: r["status"] for r in read_cohort_csv(out / "cohort.csv")}
    assert status == {
        "broken.nii.gz": f"{folder / 'broken.nii.gz'}: broken symbolic link (it points to gone.nii.gz, which does "
                         "not exist)",
        "case.nii.gz": "ok",
        "loop.nii.gz": f"{folder / 'loop.nii.gz'}: symbolic link loop",
        "pipe.nii.gz": f"{folder / 'pipe.nii.gz'}: is a named pipe (FIFO), not a regular file or a folder"}


def test_a_file_given_by_a_link_and_by_its_path_is_given_twice(tmp_path: Path) -> None:
    real = _image(tmp_path / "data" / "case.nii.gz")
    link = tmp_path / "links" / "alias.nii.gz"
    link.parent.mkdir()
    link.symlink_to(real)
    with pytest.raises(MAEAnomalyError, match=r"given twice in --images \(entries 1 and 2, the same file through "
                                              r"a symbolic link\)"):
        output_names([str(real), str(link)])


# --- item 16: messages ------------------------------------------------------------------------------------

def _without_file_permissions(unreadable: Path) -> list[str]:
    """A command prefix under which file permissions hold: none for an ordinary user; for root (who
    ignores them), setpriv dropping the capabilities that bypass them, so paths stay reachable."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    prefix = [setpriv or "setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    if setpriv is None or subprocess.run([*prefix, "cat", str(unreadable)], capture_output=True).returncode == 0:
        pytest.skip("running as root, and file permissions cannot be made to apply (no setpriv, or it had no effect)")
    return prefix


RUN_EACH = """
import json, sys
from MAEAnomalyLib.cli.main import main
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit:
        pass
    print("--- end of run ---", file=sys.stderr, flush=True)
"""


def test_an_unreadable_input_says_so(untrained_model_dir: Path, tmp_path: Path) -> None:
    source = make_subject(0).image
    unreadable = []
    for suffix in (".nii", ".mha", ".nrrd", ".nii.gz"):
        path = tmp_path / f"locked{suffix}"
        sitk.WriteImage(source, str(path))
        path.chmod(0)
        unreadable.append(path)
    good = _image(tmp_path / "good.nii.gz")
    prefix = _without_file_permissions(unreadable[0])
    common = ["--model", str(untrained_model_dir), "--device", "cpu"]
    runs = [["score", "--image", str(p), "--out-dir", str(tmp_path / f"out{i}"), *common]
            for i, p in enumerate(unreadable)]
    runs.append(["score", "--images", str(unreadable[0]), "--out-dir", str(tmp_path / "cohort"), "--workers", "0",
                 *common])
    runs.append(["train", "--preset", "tiny", "--images", str(unreadable[3]), str(good), "--out", str(tmp_path / "m"),
                 "--device", "cpu"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([*prefix, sys.executable, "-c", RUN_EACH, json.dumps(runs)], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    errors = [[ln for ln in part.splitlines() if ln.startswith("maeanomaly: error:")]
              for part in done.stderr.split("--- end of run ---")[:-1]]
    assert len(errors) == len(runs), done.stderr
    for path, lines in zip([*unreadable, unreadable[0], unreadable[3]], errors, strict=True):
        assert lines == [f"maeanomaly: error: {path}: cannot read (permission denied)"], done.stderr
    rows = read_cohort_csv(tmp_path / "cohort" / "cohort.csv")
    assert [r["status"] for r in rows] == [f"{unreadable[0]}: cannot read (permission denied)"]


def test_a_byte_order_mark_is_not_part_of_the_first_path(tmp_path: Path) -> None:
    listed = tmp_path / "list.txt"
    listed.write_text("a.nii.gz\r\nb.nii.gz\r\n", encoding="utf-8-sig")  # as Notepad saves it
    assert expand_paths([str(listed)]) == [str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz")]


def test_names_differing_in_case_stay_short_and_unique_in_a_deep_tree() -> None:
    deep = "/" + "/".join(f"level{i:02d}_of_a_deep_archive" for i in range(40))
    names = output_names([f"{deep}/Case.nii.gz", f"{deep}/case.nii.gz", f"{deep}/other.nii.gz"])
    assert len({n.lower() for n in names}) == 3 and names[2] == "other"
    assert all(len(n) <= 20 for n in names), names
    # Told apart only near the root: the folders would make a name too long for a file system.
    names = output_names([f"/a{deep}/case.nii.gz", f"/b{deep}/case.nii.gz"])
    assert len({n.lower() for n in names}) == 2 and all(len(n) <= 120 for n in names), names
