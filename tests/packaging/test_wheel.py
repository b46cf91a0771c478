"""The wheel CI builds (``scripts/test``: ``pip wheel --no-deps -w dist .``): it holds
every file of the package (templates, static files, the sample deck) and installs into
a plain virtual environment, where the ``sidecar`` command runs."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "dist"
#: The runtime dependencies as wheels, kept between runs so the install needs no network.
WHEELHOUSE = DIST / "wheelhouse"

pytestmark = pytest.mark.timeout(600)


def _project() -> tuple[str, str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return meta["name"].replace("-", "_"), meta["version"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This version's wheel from dist/ (scripts/test builds it), else built here."""
    name, version = _project()
    built = DIST / f"{name}-{version}-py3-none-any.whl"
    if built.exists():
        return built
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                    str(ROOT)], check=True, timeout=300)
    return out / built.name


def test_wheel_holds_every_file_of_the_package(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "sidecar").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    missing = sorted(source - names)
    assert not missing, (f"not in {wheel.name} (package-data in pyproject.toml, or a "
                         f"stale wheel: run scripts/test): {missing}")
    # Nor anything that is no longer in the source (an old build/ directory's copy).
    extra = sorted(n for n in names if n.startswith("sidecar/") and n not in source)
    assert not extra, f"in {wheel.name} but not in the source: {extra}"
    for needed in ("sidecar/templates/invoice.html.j2", "sidecar/templates/invoice.css",
                   "sidecar/data/sample-deck.csv", "sidecar/py.typed"):
        assert needed in names
    name, version = _project()
    entry = zipfile.ZipFile(wheel).read(f"{name}-{version}.dist-info/entry_points.txt")
    assert b"sidecar = sidecar.cli:main" in entry
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


def test_wheel_installs_into_a_plain_venv_and_runs(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    py = env_dir / "bin" / "python"

    def install(*source: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-compile",
                               *source, str(wheel)], capture_output=True, text=True,
                              timeout=400)

    # From the kept wheels, without the network; the first run (or a new dependency)
    # fetches them first.
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    p = install("--no-index", "--find-links", str(WHEELHOUSE))
    if p.returncode != 0:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(WHEELHOUSE),
                        "--find-links", str(WHEELHOUSE), str(wheel)], check=True,
                       timeout=400)
        p = install("--no-index", "--find-links", str(WHEELHOUSE))
    assert p.returncode == 0, p.stdout + p.stderr
    # The installed package is the wheel's, not this checkout's.
    where = subprocess.run([str(py), "-c", "import sidecar; print(sidecar.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path)
    assert where.stdout.startswith(str(env_dir)), where.stdout
    out = subprocess.run([str(env_dir / "bin" / "sidecar"), "--help"], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for command in ("run", "api", "deck", "account"):
        assert f"  {command} " in out.stdout
    # Data files are found where the installed package looks for them.
    deck = subprocess.run(
        [str(py), "-c", "import importlib.resources as r; "
         "print(r.files('sidecar').joinpath('data/sample-deck.csv').read_text()[:200])"],
        capture_output=True, text=True, check=True, cwd=tmp_path)
    assert "destination" in deck.stdout.lower()
