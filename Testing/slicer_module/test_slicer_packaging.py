"""The extension's CMake files list exactly the files in the repository, with complete metadata; configured,
built and installed with a stand-in for Slicer's macros, they install each file once."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from MAEAnomalyLib.core import shipped

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "MAEAnomaly"
METADATA = ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
            "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS")


def cmake_sets(path: Path) -> dict[str, list[str]]:
    """The ``set(NAME values...)`` commands of a CMake file, with ``${MODULE_NAME}`` expanded."""
    text = re.sub(r"#[^\n]*", "", path.read_text(encoding="utf-8"))
    sets: dict[str, list[str]] = {}
    for name, body in re.findall(r"\bset\(\s*(\w+)((?:[^()\"]|\"[^\"]*\")*)\)", text):
        sets[name] = [v.strip('"') for v in re.findall(r"\"[^\"]*\"|\S+", body)]
    module = sets.get("MODULE_NAME", [""])[0]
    return {k: [v.replace("${MODULE_NAME}", module) for v in vs] for k, vs in sets.items()}


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    return struct.unpack(">II", data[16:24])


def module_call(text: str) -> str:
    """The arguments of the one slicerMacroBuildScriptedModule call."""
    calls = re.findall(r"slicerMacroBuildScriptedModule\((.*?)\n\s*\)", text, re.S)
    assert len(calls) == 1, "MAEAnomaly/CMakeLists.txt must build the module with one slicerMacroBuildScriptedModule"
    return calls[0]


def test_extension_metadata_is_complete() -> None:
    sets = cmake_sets(ROOT / "CMakeLists.txt")
    for name in METADATA:
        assert sets.get(name) and all(sets[name]), f"{name} is missing from CMakeLists.txt"
    assert sets["EXTENSION_DEPENDS"] == ["PyTorch"]
    homepage = sets["EXTENSION_HOMEPAGE"][0]
    assert homepage.startswith("https://")
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "add_subdirectory(MAEAnomaly)" in text
    # The icon and screenshot the Extension Manager shows are files of this repository.
    raw = homepage.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    for url in sets["EXTENSION_ICONURL"] + sets["EXTENSION_SCREENSHOTURLS"]:
        assert url.startswith(raw), url
        assert (ROOT / url[len(raw):]).is_file(), f"{url} names a file that is not in the repository"
    # The module's help links to the user guide under the same homepage.
    assert f'USER_GUIDE = "{homepage}/blob/main/docs/slicer.md"' in (MODULE / "MAEAnomaly.py").read_text("utf-8")
    assert (ROOT / "docs" / "slicer.md").is_file()


def test_weights_licence_is_stated() -> None:
    """The Extension Manager's description, the README and the model card say the shipped weights are derived
    from IXI and under CC BY-SA 3.0 (the sample's terms, Resources/SampleData/README.md)."""
    description = cmake_sets(ROOT / "CMakeLists.txt")["EXTENSION_DESCRIPTION"][0]
    assert re.search(r"weights are derived from the IXI data set.*CC BY-SA 3\.0", description)
    licence = (ROOT / "README.md").read_text("utf-8").split("## Citation and licence", 1)[1]
    assert re.search(r"weights .*derived from the IXI data set.*\(CC BY-SA 3\.0", licence, re.S)
    card = (ROOT / "models" / "brain-t1" / "MODEL_CARD.md").read_text("utf-8")
    assert "CC BY-SA 3.0" in card and "derived from it" in card
    assert "CC BY-SA 3.0" in (ROOT / "Resources" / "SampleData" / "README.md").read_text("utf-8")


def test_module_lists_every_script_and_resource() -> None:
    sets = cmake_sets(MODULE / "CMakeLists.txt")
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule(" in text
    listed = set(sets["MODULE_PYTHON_SCRIPTS"]) | set(sets["MODULE_PYTHON_RESOURCES"])
    present = files_under(MODULE) - {"CMakeLists.txt"}
    assert listed == present, (f"not listed in MAEAnomaly/CMakeLists.txt: {sorted(present - listed)}; "
                               f"listed but missing: {sorted(listed - present)}")
    assert all(name.startswith("Resources/") for name in sets["MODULE_PYTHON_RESOURCES"])


def test_library_is_installed_beside_the_module() -> None:
    sets = cmake_sets(MODULE / "CMakeLists.txt")
    listed = set(sets["MAEANOMALYLIB_PYTHON_SCRIPTS"])
    present = {f"MAEAnomalyLib/{name}" for name in files_under(ROOT / "MAEAnomalyLib")}
    non_python = sorted(p for p in present if not p.endswith(".py"))
    assert not non_python, f"the library must hold Python files only (CMake installs no resources): {non_python}"
    assert listed == present, (f"not listed in MAEAnomaly/CMakeLists.txt: {sorted(present - listed)}; "
                               f"listed but missing: {sorted(listed - present)}")
    # Staged in the module's build folder and built and installed with the module's own scripts (see
    # test_each_file_is_installed_once for why no second ctkMacroCompilePythonScript).
    text = (MODULE / "CMakeLists.txt").read_text("utf-8")
    assert "configure_file(${CMAKE_CURRENT_SOURCE_DIR}/../${script} ${CMAKE_CURRENT_BINARY_DIR}/${script} COPYONLY)" \
        in text
    assert "SCRIPTS ${MODULE_PYTHON_SCRIPTS} ${MAEANOMALYLIB_STAGED_SCRIPTS}" in module_call(text)


def test_license_icon_and_screenshot() -> None:
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0" in license_text
    assert "MAEAnomaly contributors" in license_text
    assert png_size(ROOT / "Resources" / "MAEAnomaly.png") == (128, 128)  # the Extension Manager's size
    assert png_size(MODULE / "Resources" / "Icons" / "MAEAnomaly.png") == (128, 128)
    width, height = png_size(ROOT / "Resources" / "Screenshot.png")
    assert width >= 512 and height >= 256


def test_shipped_models_are_installed_beside_the_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """models/ goes where MAEAnomalyLib.core.shipped looks for it: beside the installed MAEAnomalyLib package."""
    sets = cmake_sets(MODULE / "CMakeLists.txt")
    # Copied to the same relative path under qt-scripted-modules, where MAEAnomalyLib/ goes too.
    assert "set(copy ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/${file})" \
        in (MODULE / "CMakeLists.txt").read_text("utf-8")
    models = {f"models/{name}" for name in files_under(ROOT / "models")}
    assert models and models <= set(sets["MAEANOMALY_DATA_FILES"])
    # An installed layout: <lib>/MAEAnomalyLib/shipped.py and <lib>/models/<name>/.
    lib = tmp_path / "qt-scripted-modules"
    shutil.copytree(ROOT / "MAEAnomalyLib", lib / "MAEAnomalyLib")
    model = lib / "models" / "brain-t1"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "MODEL_CARD.md").write_text("# brain-t1\n\nT1-weighted adult brains.\n")
    monkeypatch.delenv("MAEANOMALY_MODELS", raising=False)
    code = "import sys; sys.path.insert(0, sys.argv[1]); from MAEAnomalyLib.core.shipped import shipped_models; " \
           "print([(m.name, str(m.path), m.summary) for m in shipped_models()])"
    out = subprocess.run([sys.executable, "-c", code, str(lib)], capture_output=True, encoding="utf-8", check=True)
    assert out.stdout.strip() == str([("brain-t1", str(model), "T1-weighted adult brains.")])
    assert shipped.DEFAULT_MODEL == "brain-t1"


# Slicer 5.10's extension template: Utilities/Templates/Extensions/Default/CMakeLists.txt at tag v5.10.0 of
# github.com/Slicer/Slicer (commit a2b6d082be04274a849884fbb1e85634a9df90fb).
TEMPLATE_CMAKE_MINIMUM = "cmake_minimum_required(VERSION 3.20.6...3.22.6 FATAL_ERROR)"


def test_cmake_minimum_required_is_the_templates() -> None:
    text = (ROOT / "CMakeLists.txt").read_text("utf-8")
    assert text.splitlines()[0] == TEMPLATE_CMAKE_MINIMUM
    assert text.count("cmake_minimum_required(") == 1
    assert "cmake_minimum_required(" not in (MODULE / "CMakeLists.txt").read_text("utf-8")


def test_data_files_are_listed_and_copied_at_build_time() -> None:
    """The models and the sample: every file listed, each copied by a build rule that depends on it."""
    sets = cmake_sets(MODULE / "CMakeLists.txt")
    listed = set(sets["MAEANOMALY_DATA_FILES"])
    present = {f"models/{name}" for name in files_under(ROOT / "models")} \
        | {f"Resources/SampleData/{name}" for name in files_under(ROOT / "Resources" / "SampleData")}
    assert listed == present, (f"not listed in MAEANOMALY_DATA_FILES: {sorted(present - listed)}; "
                               f"listed but missing: {sorted(listed - present)}")
    text = re.sub(r"#[^\n]*", "", (MODULE / "CMakeLists.txt").read_text("utf-8"))
    rule = re.search(r"foreach\(file \$\{MAEANOMALY_DATA_FILES\}\)(.*?)endforeach\(\)", text, re.S)
    assert rule, "the data files are not copied by a build rule"
    assert re.search(r"add_custom_command\(\s*OUTPUT \$\{copy\}.*DEPENDS \$\{source\}", rule.group(1), re.S)
    assert re.search(r"add_custom_target\(\S+ ALL DEPENDS \$\{MAEANOMALY_DATA_COPIES\}\)", text)


def test_one_install_rule() -> None:
    """slicerMacroBuildScriptedModule's install(DIRECTORY) installs the whole build folder of the module; any
    other install rule for what is in it (install(), a second ctkMacroCompilePythonScript) installs it again."""
    for path in (ROOT / "CMakeLists.txt", MODULE / "CMakeLists.txt"):
        text = re.sub(r"#[^\n]*", "", path.read_text("utf-8"))
        for command in ("install(", "ctkMacroCompilePythonScript(", "file(COPY"):
            assert command not in text, f"{path.relative_to(ROOT)} has {command}...)"
    module_call((MODULE / "CMakeLists.txt").read_text("utf-8"))


# A stand-in for the parts of Slicer 5.10 that the extension's CMake uses, reduced to what decides which file
# goes where. slicerMacroBuildScriptedModule as in Slicer's CMake/SlicerMacroBuildScriptedModule.cmake (tag
# v5.10.0), and ctkMacroCompilePythonScript as in CTK's CMake/ctkMacroCompilePythonScript.cmake at commit
# dd4caeae7e979cf441e44ee85d3b0780120d113d (the CTK that Slicer 5.10's SuperBuild/External_CTK.cmake builds):
# SCRIPTS (relative to SOURCE_DIR, or absolute, then kept relative to the current build folder) and RESOURCES
# copied at build time into DESTINATION_DIR, and that whole folder installed by one install(DIRECTORY). The
# byte-compilation is left out. The directory variables are those of a Linux extension build
# (CMake/SlicerDirectories.cmake, CMake/UseSlicer.cmake.in).
FAKE_SLICER = {
    "SlicerConfig.cmake": """
set(Slicer_VERSION "5.10.0")
set(Slicer_USE_PYTHONQT ON)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-5.10/qt-scripted-modules")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "./lib/Slicer-5.10/qt-scripted-modules")
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/Nothing.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/Nothing.cmake")
""",
    "Nothing.cmake": "",
    "UseSlicer.cmake": """
macro(slicer_add_python_unittest)
endmacro()

macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(MY "NO_INSTALL_SUBDIR;GLOBAL_TARGET" ""
    "TARGET_NAME;SCRIPTS;RESOURCES;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR" ${ARGN})
  if(NOT DEFINED MY_SOURCE_DIR)
    set(MY_SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
  endif()
  get_filename_component(MY_SOURCE_DIR ${MY_SOURCE_DIR} REALPATH)
  get_filename_component(MY_DESTINATION_DIR ${MY_DESTINATION_DIR} REALPATH)
  set(_copies)
  foreach(file ${MY_SCRIPTS})
    get_filename_component(file_ext ${file} EXT)
    if(NOT "${file_ext}" MATCHES "py")
      set(file "${file}.py")
    endif()
    if(IS_ABSOLUTE ${file})
      set(src ${file})
      file(RELATIVE_PATH tgt_file ${CMAKE_CURRENT_BINARY_DIR} ${file})
    else()
      set(src ${MY_SOURCE_DIR}/${file})
      set(tgt_file ${file})
    endif()
    add_custom_command(OUTPUT ${MY_DESTINATION_DIR}/${tgt_file} DEPENDS ${src}
      COMMAND ${CMAKE_COMMAND} -E copy ${src} ${MY_DESTINATION_DIR}/${tgt_file})
    list(APPEND _copies ${MY_DESTINATION_DIR}/${tgt_file})
  endforeach()
  foreach(file ${MY_RESOURCES})
    if(IS_ABSOLUTE ${file})
      set(src ${file})
    else()
      set(src ${MY_SOURCE_DIR}/${file})
    endif()
    add_custom_command(OUTPUT ${MY_DESTINATION_DIR}/${file} DEPENDS ${src}
      COMMAND ${CMAKE_COMMAND} -E copy ${src} ${MY_DESTINATION_DIR}/${file})
    list(APPEND _copies ${MY_DESTINATION_DIR}/${file})
  endforeach()
  add_custom_target(Copy${MY_TARGET_NAME}PythonFiles ALL DEPENDS ${_copies})
  set(MY_DIRECTORY_TO_INSTALL ${MY_DESTINATION_DIR})
  if(MY_NO_INSTALL_SUBDIR)
    set(MY_DIRECTORY_TO_INSTALL ${MY_DESTINATION_DIR}/)
  endif()
  install(DIRECTORY "${MY_DIRECTORY_TO_INSTALL}"
    DESTINATION "${MY_INSTALL_DIR}" COMPONENT RuntimeLibraries USE_SOURCE_PERMISSIONS)
endmacro()

macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): ${MY_SLICER_UNPARSED_ARGUMENTS}")
  endif()
  foreach(value ${MY_SLICER_SCRIPTS} ${MY_SLICER_RESOURCES})
    if(NOT IS_ABSOLUTE ${value})
      set(value_absolute ${CMAKE_CURRENT_SOURCE_DIR}/${value})
    else()
      set(value_absolute ${value})
    endif()
    if(NOT EXISTS ${value_absolute} AND NOT EXISTS ${value_absolute}.py)
      message(FATAL_ERROR "slicerMacroBuildScriptedModule given nonexistent file or directory '${value}'")
    endif()
  endforeach()
  ctkMacroCompilePythonScript(
    TARGET_NAME ${MY_SLICER_NAME}
    SCRIPTS "${MY_SLICER_SCRIPTS}"
    RESOURCES "${MY_SLICER_RESOURCES}"
    DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}
    INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}
    NO_INSTALL_SUBDIR
    )
endmacro()
""",
}
SCRIPTED = "lib/Slicer-5.10/qt-scripted-modules"


def test_each_file_is_installed_once(tmp_path: Path) -> None:
    """Configure, build and install the extension with the stand-in for Slicer's macros: the package holds
    exactly the listed files, each installed once, and the data is copied into the build tree by the build."""
    cmake = shutil.which("cmake")
    if cmake is None or not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        pytest.skip("no cmake or C++ compiler here (project() enables C and C++)")
    fake, build, prefix = tmp_path / "Slicer", tmp_path / "build", tmp_path / "install"
    fake.mkdir()
    for name, text in FAKE_SLICER.items():
        (fake / name).write_text(text)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []

    def run(*args: str) -> str:
        out = subprocess.run([cmake, *args], capture_output=True, encoding="utf-8")
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    run("-S", str(ROOT), "-B", str(build), *generator, f"-DSlicer_DIR={fake}", "-DBUILD_TESTING=OFF")
    run("--build", str(build))
    # The build, not only the configuration, puts the data into the build tree: a lost copy comes back.
    copies = [build / SCRIPTED / name for name in ("models/brain-t1/config.json",
                                                    "Resources/SampleData/IXI516-HH-2297_T1.nii.gz")]
    for copy in copies:
        assert copy.is_file()
        copy.unlink()
    run("--build", str(build))
    for copy in copies:
        assert copy.is_file(), f"{copy.relative_to(build)} is not copied again by the build"

    log = run("--install", str(build), "--prefix", str(prefix))
    installed = [Path(line.split(": ", 1)[1]) for line in log.splitlines()
                 if line.startswith(("-- Installing: ", "-- Up-to-date: "))]
    files = [p.relative_to(prefix / SCRIPTED).as_posix() for p in installed if p.is_file()]
    twice = sorted({name for name in files if files.count(name) > 1})
    assert not twice, f"installed more than once: {twice}"
    sets = cmake_sets(MODULE / "CMakeLists.txt")
    expected = set(sets["MODULE_PYTHON_SCRIPTS"]) | set(sets["MODULE_PYTHON_RESOURCES"]) \
        | set(sets["MAEANOMALYLIB_PYTHON_SCRIPTS"]) | set(sets["MAEANOMALY_DATA_FILES"])
    assert set(files) == expected, (f"missing: {sorted(expected - set(files))}; "
                                    f"unexpected: {sorted(set(files) - expected)}")
    for name in expected:  # byte for byte the repository's files
        source = MODULE / name if (MODULE / name).is_file() else ROOT / name
        assert (prefix / SCRIPTED / name).read_bytes() == source.read_bytes(), name
