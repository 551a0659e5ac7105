"""The README's "Choosing an artifact" table and plots: `evit benchmark` of seg-B1 at 512x1024 on this machine.

Seeded, trained-looking weights (the team's fixtures), not the official checkpoint. The labelled set is six
scikit-image photos at 512x1024, labelled with the fp32 PyTorch model's own predictions with shapes drawn
over them (the tests' construction): PyTorch scores high but not 100, and the mIoU column shows what each
export loses against PyTorch, not the model's Cityscapes accuracy. Calibration uses seven other photos.

Writes results/choosing_an_artifact.json and ../docs/benchmark/ (table and plots); the artifacts stay in
.cache/choosing_an_artifact/ (reused by a rerun). Long: about an hour on two busy cores (run it with nice).
``--threads N`` sets the runtimes' threads (default 2).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from harness import RESULTS, ROOT, seeded_weights
from PIL import Image, ImageDraw

MODEL, BUILDER, SIZE = "efficientvit-seg-b1-cityscapes", "efficientvit_seg_b1_cityscapes", (512, 1024)
TEST_PHOTOS = ("chelsea", "immunohistochemistry", "camera", "moon", "coins", "grass")
CALIB_PHOTOS = ("astronaut", "coffee", "rocket", "hubble_deep_field", "retina", "gravel", "brick")
IGNORE = 255
WORK = RESULTS.parent / ".cache" / "choosing_an_artifact"
DOCS = ROOT / "docs" / "benchmark"


def _photo(name: str) -> Image.Image:
    from skimage import data

    image = getattr(data, name)()
    image = image[0] if isinstance(image, tuple) else image
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(image[..., :3]).astype(np.uint8))


def _photos(folder: Path, names: tuple[str, ...]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        _photo(name).convert("RGB").resize((SIZE[1], SIZE[0]), Image.Resampling.BICUBIC).save(folder / f"{name}.png")
    return folder


def _labelled(root: Path, photos: Path, weights: Path) -> Path:
    """The ``masks`` layout: images/, labels/ (train ids, 255 ignored), classes.yaml."""
    import torch
    import yaml

    from evit_deploy import zoo
    from evit_deploy.labelled.protocol import load_rgb, protocol_at, upsample_argmax

    card = zoo.get_card(MODEL)
    model, protocol = zoo.create_model(card, weights), protocol_at(card, SIZE)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for photo in sorted(photos.glob("*.png")):
        shutil.copy(photo, root / "images" / photo.name)
        with torch.no_grad():
            logits = model(torch.from_numpy(protocol.prepare(load_rgb(photo)))).numpy()[0]
        labels = Image.fromarray(upsample_argmax(logits, SIZE).astype(np.uint8))
        draw, (h, w) = ImageDraw.Draw(labels), SIZE
        draw.rectangle((0, int(0.85 * h), w - 1, h - 1), fill=IGNORE)  # ignored band (the ego vehicle)
        draw.ellipse((w // 5, h // 5, w // 2, h // 2), fill=13)  # a car the model does not see
        labels.save(root / "labels" / photo.name)
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": card.classes, "ignore_index": IGNORE}))
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    weights = seeded_weights(BUILDER)
    if weights is None:
        print("skipped: the team's reference data (EVIT_SHARED) is not here", file=sys.stderr)
        return 0
    from evit_deploy.benchmark import run_benchmark
    from evit_deploy.benchmark.outputs import MARKDOWN
    from evit_deploy.benchmark.plots import BARS, SCATTER

    photos = _photos(WORK / "inputs" / "photos", TEST_PHOTOS)
    data = WORK / "inputs" / "labelled"
    if not (data / "classes.yaml").is_file():
        _labelled(data, photos, weights)
    calib = _photos(WORK / "inputs" / "calib", CALIB_PHOTOS)
    started = time.perf_counter()
    result = run_benchmark(MODEL, weights=weights, resolutions=[SIZE], data=data, calib=calib, images=photos,
                           samples=2, threads=args.threads, warmup=3, iters=20, out=WORK / "out",
                           progress=lambda message: print(f"{time.perf_counter() - started:7.0f} s  {message}",
                                                          flush=True))
    DOCS.mkdir(parents=True, exist_ok=True)
    for name in (MARKDOWN, SCATTER, BARS):
        shutil.copy(WORK / "out" / name, DOCS / name)
    shutil.copy(WORK / "out" / "benchmark.json", RESULTS / "choosing_an_artifact.json")
    print((DOCS / MARKDOWN).read_text())
    print(f"{len(result.rows)} rows in {time.perf_counter() - started:.0f} s; failed: "
          f"{', '.join(r.key for r in result.failed) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
