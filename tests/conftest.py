"""Shared fixtures: where the team's reference data lives, and seeded weights."""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def _share_the_cores() -> None:
    """Each xdist worker gets its share of the cores for PyTorch's OpenMP and BLAS threads.

    Left at their default, every worker starts a thread per core and the spinning OpenMP threads
    oversubscribe the machine: with 2 workers on 2 cores the slow ONNX parity tests took 95 s
    (159 s of CPU) instead of 70 s (105 s). Must run before anything imports torch; the CLI
    subprocesses the tests start inherit it. An explicit ``threads=`` in a test still wins.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = str(max(1, (os.cpu_count() or 1) // workers))
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, share)


_share_the_cores()


@contextmanager
def _registered_model(builder: str, build: Callable[..., Any], card: Any) -> Iterator[None]:
    from evit_deploy.nn import BUILDERS
    from evit_deploy.zoo import registry

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(BUILDERS, builder, build)
        patch.setitem(registry._REGISTERED, card.name, card)
        yield


@pytest.fixture(scope="session")
def registered_model() -> Callable[..., Any]:
    """``with registered_model(builder, build, card):`` a test's builder and card exist for the block
    only. Left registered, they leaked into later tests of the same worker
    (test_every_builder_has_a_key_file saw them once the slow tests ran first)."""
    return _registered_model


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow end-to-end tests first: started last, a few minutes-long tests left one worker
    running alone at the end of ``make test`` while the other idled."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EVIT_SHARED", REPO.parent / "shared")).resolve()
REFERENCE = SHARED / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.fail(f"reference data not found at {REFERENCE}; set EVIT_SHARED to the shared/ folder")
    return REFERENCE


def _load_seeded_weights() -> ModuleType:
    spec = importlib.util.spec_from_file_location("seeded_weights", REFERENCE / "fixtures" / "seeded_weights.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def seeded_weights() -> ModuleType:
    """The team's ``seeded_weights`` module: trained-looking weights from a key list and a seed."""
    return _load_seeded_weights()


@pytest.fixture(scope="session")
def seeded_checkpoint(tmp_path_factory: pytest.TempPathFactory, seeded_weights: ModuleType, reference_dir: Path):
    """``seeded_checkpoint("efficientvit_seg_b1_cityscapes")`` -> a .safetensors of trained-looking weights."""
    cache: dict[tuple[str, int], Path] = {}

    def make(builder: str, seed: int = 1234) -> Path:
        if (builder, seed) not in cache:
            path = tmp_path_factory.mktemp("weights") / f"{builder}-{seed}.safetensors"
            sd = seeded_weights.state_dict(reference_dir / "state_dict_keys" / f"{builder}.txt", seed)
            seeded_weights.save(sd, path)
            cache[builder, seed] = path
        return cache[builder, seed]

    return make


class CliResult:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, stdout={self.stdout[-2000:]!r}, stderr={self.stderr[-2000:]!r})"


@pytest.fixture
def cli():
    """Run ``evit ARGS`` in-process; returns exit code, stdout and stderr separately.

    A run that prints a traceback fails the test unless it passed ``--debug``: users see one
    line per error, never a traceback (issue 14)."""
    from typer.testing import CliRunner

    from evit_deploy.cli import app

    runner = CliRunner()

    def invoke(*args: object) -> CliResult:
        argv = [str(a) for a in args]
        result = runner.invoke(app, argv, catch_exceptions=False)
        if "--debug" not in argv and "Traceback (most recent call last)" in result.stdout + result.stderr:
            pytest.fail(f"`evit {' '.join(argv)}` printed a traceback without --debug:\n{result.stderr[-4000:]}")
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return invoke


# --------------------------------------------------------------------------- TensorRT (issue 9)


@pytest.fixture
def trt_gpu() -> None:
    """Skip (with the reason) unless TensorRT and an NVIDIA GPU are usable here."""
    from evit_deploy.trt.build import gpu_unavailable

    reason = gpu_unavailable()
    if reason is not None:
        pytest.skip(f"needs an NVIDIA GPU with TensorRT: {reason}")


@pytest.fixture
def needs_macos_for():
    """``needs_macos_for(artifact)``: skip (saying so) below the macOS a Core ML artifact's specification
    needs; coremltools would load it without a word and fail at the first predict (issue 20 item 16)."""
    import platform

    def check(artifact: Path) -> None:
        from evit_deploy.coreml.options import SPEC_MACOS
        from evit_deploy.mil.program import read_spec

        needed = SPEC_MACOS[read_spec(artifact).specificationVersion]
        have = platform.mac_ver()[0]
        if tuple(int(p) for p in have.split(".")[:2]) < (int(needed), 0):
            pytest.skip(f"{artifact.name} needs macOS {needed}; this is macOS {have}")

    return check


# skimage's bundled photographs (no download; its synthetic images such as colorwheel are left
# out); the calibration and test sets share no image.
CALIB_PHOTOS = ("astronaut", "coffee", "rocket", "hubble_deep_field", "retina", "gravel", "brick")
TEST_PHOTOS = ("chelsea", "immunohistochemistry", "camera", "moon", "coins", "grass")


def _photo(name: str):
    """One of scikit-image's bundled images as HxWx3 uint8 (grey replicated, stereo: left view)."""
    import warnings

    import numpy as np

    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the real photos these tests use")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = getattr(skimage_data, name)()
    if isinstance(image, tuple):
        image = image[0]
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def _write_photos(folder: Path, names: tuple[str, ...], variants: int = 1) -> Path:
    """Each photo as a PNG, plus ``variants - 1`` crops/flips of it (up to 4 views a photo)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        image = _photo(name)
        h, w = image.shape[:2]
        views = [image, image[h // 4:, : 3 * w // 4][:, ::-1], image[: 3 * h // 4, w // 4:], image[::-1, ::-1]]
        for index, view in enumerate(views[:variants]):
            suffix = f"_{index}" if variants > 1 else ""
            Image.fromarray(np.ascontiguousarray(view)).save(folder / f"{name}{suffix}.png")
    return folder


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory: pytest.TempPathFactory):
    """``photo_folder(names, variants=1)`` -> a folder of those skimage photos (made once a session)."""
    made: dict[tuple[tuple[str, ...], int], Path] = {}

    def make(names: tuple[str, ...], variants: int = 1) -> Path:
        if (names, variants) not in made:
            made[names, variants] = _write_photos(tmp_path_factory.mktemp("photos"), names, variants)
        return made[names, variants]

    return make


@pytest.fixture(scope="session")
def calib_photos(photo_folder) -> Path:
    """A folder of real photos for int8 calibration (never used for testing)."""
    return photo_folder(CALIB_PHOTOS)


@pytest.fixture(scope="session")
def test_photos(photo_folder) -> Path:
    """A folder of real photos for parity, disjoint from ``calib_photos``."""
    return photo_folder(TEST_PHOTOS)


@pytest.fixture(scope="session")
def precision_limited():
    """``precision_limited(report, metric, bar, slack)``: a task figure below the issue's ``bar``
    is the precision's limit, not the export's.

    Holds when the reference with only its weights rounded to the artifact's precision misses
    ``bar`` too (the seeded weights' decision margins are thinner than int8/fp16), verify's
    check and note say so, and the artifact stays within ``slack`` of that reference, so an
    export that loses more than the precision costs still fails."""

    def check(report: Any, metric: str, bar: float, slack: float) -> None:
        assert all(m.nonfinite == 0 for m in report.outputs.values())
        assert report.weight_rounding is not None, "verify did not score the weight-rounded reference"
        bound, value = report.weight_rounding[metric], report.task_metrics[metric]
        (judged,) = [c for c in report.checks if c.name == f"task.{metric}"]
        assert judged.threshold == bar and bound < bar and judged.out_of_reach, (metric, bound, value)
        assert any(f"an {report.precision} artifact cannot be expected to meet it" in note
                   for note in report.notes), report.notes
        assert value >= bound - slack, (metric, bound, value)

    return check


@pytest.fixture(scope="session", autouse=True)
def _toolchain_logs_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Toolchain failure logs (exit 3) go to the session's temp folder, never ~/.cache."""
    folder = tmp_path_factory.getbasetemp() / "toolchain-logs"
    os.environ["EVIT_LOG_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def _calibration_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """int8 calibration caches go to the session's temp folder, never ~/.cache."""
    folder = tmp_path_factory.getbasetemp() / "calib-cache"
    os.environ["EVIT_CALIB_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def loud_attention():
    """``loud_attention(state_dict, scale)``: every LiteMLA's q and k scaled by ``scale``.

    The token sums (numerator and normaliser) grow by scale**2 while their ratio, the
    attention's output, stays the same: the model computes the same function in fp32, only
    the range its sums need grows (past fp16's 65504 for a large enough scale)."""

    def scale_qk(sd: dict, scale: float, dim: int = 16) -> dict:
        out = dict(sd)
        for key, value in sd.items():
            if key.endswith("context_module.main.qkv.conv.weight"):
                w = value.copy()
                for head in range(w.shape[0] // (3 * dim)):
                    w[head * 3 * dim: head * 3 * dim + 2 * dim] *= scale  # this head's q then k rows
                out[key] = w
        return out

    return scale_qk


@pytest.fixture(scope="session")
def small_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete small artifact (cls-B0 ONNX at 64x64, random weights), exported once a session.
    Tests that edit it work on ``copy_artifact(small_onnx, tmp_path)``."""
    import warnings

    from evit_deploy import api

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights, on purpose
        return api.export("efficientvit-b0-r224", target="onnx", resolution=(64, 64),
                          out=tmp_path_factory.mktemp("small-onnx")).artifact


@pytest.fixture
def copy_artifact():
    """``copy_artifact(artifact, folder)`` -> the artifact copied with its manifest into ``folder``."""
    import shutil

    def copy(artifact: Path, folder: Path) -> Path:
        shutil.copytree(artifact.parent, folder, dirs_exist_ok=True)
        return folder / artifact.name

    return copy
