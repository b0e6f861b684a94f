"""The distribution installs one import root, `generalist_trainer` (issue 14 item 7): the folders kernels/, trainer/
and bench/ become its subpackages, so nothing lands in site-packages/kernels (Hugging Face's kernel hub) or
site-packages/trainer (Coqui's trainer). Checked on a wheel built from the checkout and installed beside a stand-in
for Hugging Face's `kernels`."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]
FOLDERS = {"kernels": "generalist_trainer.kernels", "trainer": "generalist_trainer.trainer",
           "bench": "generalist_trainer.bench"}


def test_pyproject_lists_every_package_folder_under_the_import_root():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {"generalist_trainer"} | {
        ".".join([FOLDERS[init.relative_to(REPO).parts[0]], *init.relative_to(REPO).parts[1:-1]])
        for folder in FOLDERS for init in (REPO / folder).rglob("__init__.py")}
    assert set(setuptools["packages"]) == found
    mapping = {"generalist_trainer": "generalist_trainer", **{v: k for k, v in FOLDERS.items()}}
    assert setuptools["package-dir"] == mapping


def _stand_in_hf_kernels_wheel(folder: Path) -> Path:
    """A wheel named like Hugging Face's `kernels`, whose package is the top-level `kernels` it installs."""
    files = {"kernels/__init__.py": 'WHO = "hugging face kernels stand-in"\n\ndef get_kernel(name):\n    return name\n',
             "kernels-0.9.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: kernels\nVersion: 0.9.0\n",
             "kernels-0.9.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                              "Tag: py3-none-any\n"}
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append("kernels-0.9.0.dist-info/RECORD,,")
    path = folder / "kernels-0.9.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
        wheel.writestr("kernels-0.9.0.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def test_the_wheel_has_one_import_root_and_installs_beside_hugging_face_kernels(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("generalist_trainer", *FOLDERS):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "results"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                            str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("generalist_trainer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"generalist_trainer", "generalist_trainer-0.1.0.dist-info"}
    assert "generalist_trainer/kernels/cuda/common.cuh" in names and "generalist_trainer/trainer/cli.py" in names
    entry_points = zipfile.ZipFile(wheel).read("generalist_trainer-0.1.0.dist-info/entry_points.txt").decode()
    assert "generalist-trainer = generalist_trainer.trainer.cli:main" in entry_points

    site = tmp_path / "site"
    hf = _stand_in_hf_kernels_wheel(tmp_path)
    for package in (hf, wheel):  # ours second: it must not overwrite what the other one installed
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                               str(site), str(package)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    assert "stand-in" in (site / "kernels" / "__init__.py").read_text()

    probe = ("import kernels, generalist_trainer as gt, generalist_trainer.kernels as ours; "
             "from generalist_trainer.trainer.attacks import PGD; "
             "print(kernels.WHO, kernels.get_kernel('x'), ours.__file__.startswith(SITE), gt.__file__.startswith(SITE),"
             " gt.attacks.PGD is PGD)").replace("SITE", repr(str(site)))
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["hugging", "face", "kernels", "stand-in", "x", "True", "True", "True"]
    cli = subprocess.run([sys.executable, "-m", "generalist_trainer", "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0 and "train" in cli.stdout, cli.stderr
