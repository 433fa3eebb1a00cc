"""A normal (non-editable) install works away from the repository: the console script runs,
the CUDA kernel's sources are inside the installed package, and nothing but ds2 lands at the
top of site-packages."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _copy_tracked_files(destination: Path) -> None:
    """The repository as a fresh clone has it (symlinks kept), without .venv or results."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source, target = REPO / name, destination / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the work tree, not yet committed
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)


@pytest.mark.slow
def test_non_editable_install_finds_the_kernel_sources_and_installs_no_top_level_cli(tmp_path):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git checkout to know which files the project ships")
    source = tmp_path / "src"
    _copy_tracked_files(source)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # Reuse this environment's torch and the rest (a few GB) instead of downloading them again.
    (site / "_reuse_test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              str(source)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    shutil.rmtree(source)  # the install must not lean on the source tree

    help_run = subprocess.run([str(venv / "bin" / "ds2"), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert help_run.returncode == 0 and "Usage" in help_run.stdout, help_run.stderr[-2000:]
    probe = ("from ds2 import ctc; import ds2; p = ctc.cuda_sources(); "
             "print(ds2.__file__); print(p); print(sorted(x.name for x in p.iterdir()))")
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True)
    package_file, sources, names = out.stdout.splitlines()
    assert Path(package_file).is_relative_to(site) and Path(sources).is_relative_to(site / "ds2")
    assert {"ctc_kernel.cu", "ctc_binding.cpp", "ctc_device.cuh", "ctc_kernel.h", "ctc_limits.h"} <= set(eval(names))
    top_level = {p.name for p in site.iterdir()} - {"_reuse_test_environment.pth", "__pycache__"}
    assert "cli.py" not in top_level and "cli" not in top_level
    ours = {name for name in top_level if not name.startswith(("pip", "setuptools", "_distutils", "distutils",
                                                               "pkg_resources", "_virtualenv"))}
    assert {name for name in ours if not name.startswith("ds2")} == set(), ours
    assert (site / "ds2" / "cli.py").is_file() and not (site / "ds2" / "cli.py").is_symlink()
