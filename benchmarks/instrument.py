"""The trained instrument: seg-B1 (Cityscapes card) fitted to colour regions of the packaged photos.

Seeded weights have thin decision margins (median top-2 logit gap about 0.8), so int8 weights
alone already flip many pixels and hide what activation quantisation costs. This script
fits seg-B1 for 1500 steps (256x512 crops, batch 8, Adam) to pseudo-labels of the photos of
``tests/conftest.py`` (calibration and test sets both), starting from the seeded weights, so
it behaves like a trained model on them (wide margins) while nothing is downloaded:

- pseudo-labels: k-means (k=19) in CIELAB over the photos' pixels, each pixel given its
  nearest centre, smoothed by a modal filter.
- the model is fitted on random rescaled, stretched and flipped 256x512 crops of all the
  photos, like a user's model trained on its own domain. The split that must hold is int8's:
  calibration runs on the calibration photos only, accuracy is checked on the test photos.
  (Fitted on the calibration photos alone, version 1 of this recipe reached a median gap of
  2.8 on them but 0.64 on the test photos at step 500: a model with seeded-like margins
  exactly where int8 is judged.)
- the weights are cached under ``benchmarks/.cache/`` (git-ignored), keyed by the recipe, so
  a rerun (or another benchmark calling ``load_instrument()``) reuses them; an interrupted
  run resumes from its last checkpoint.
- the training curve and the margins before/after go to ``results/instrument.json``.

    python benchmarks/instrument.py --threads 2    # ~40 min on a quiet 2-core VM, hours on a busy one
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from harness import ROOT, seeded_weights, write_result

sys.path.insert(0, str(ROOT))

MODEL = "efficientvit-seg-b1-cityscapes"
BUILDER = "efficientvit_seg_b1_cityscapes"
RECIPE: dict[str, Any] = {
    "version": 2,  # bump when the training code changes what it produces
    "photos": "calibration + test photos of tests/conftest.py",
    "model": MODEL,
    "init": "seeded_weights seed 1234",
    "steps": 1500,
    "batch": 8,
    "crop": [256, 512],
    "lr": 1e-3,
    "warmup": 50,
    "weight_decay": 0.0,
    "clusters": 19,
    "modal_radius": 5,
    "seed": 0,
}
CACHE = ROOT / "benchmarks" / ".cache"
EVAL_RESOLUTION = (512, 1024)
EVAL_EVERY = 250
CHECKPOINT_EVERY = 100


def _conftest() -> ModuleType:
    """The test suite's photo lists and loader, so the instrument and the tests split photos alike."""
    spec = importlib.util.spec_from_file_location("evit_tests_conftest", ROOT / "tests" / "conftest.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recipe_key() -> str:
    return hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:12]


def weights_path() -> Path:
    return CACHE / f"instrument-seg-b1-{recipe_key()}.safetensors"


def load_instrument(threads: int = 1) -> Path:
    """The trained seg-B1 weights (official layout, .safetensors); trains them first if not cached."""
    path = weights_path()
    if not path.exists():
        train(threads)
    return path


def weights_named(name: str) -> tuple[Path | None, str]:
    """The weights a benchmark's ``--weights`` names (``seeded``, ``instrument`` or a checkpoint path),
    and how its results describe them."""
    if name == "seeded":
        return seeded_weights(BUILDER), "fixtures' seeded weights"
    if name == "instrument":
        return load_instrument(), "trained instrument (instrument.py)"
    return Path(name), name


def snapshot() -> tuple[Path, int] | None:
    """The weights of an unfinished training at its last checkpoint, and the step (None if none):
    for interim measurements, labelled as such, while the instrument still trains."""
    import torch
    from safetensors.torch import save_file

    partial = CACHE / f"instrument-seg-b1-{recipe_key()}.partial.pt"
    if not partial.exists():
        return None
    state = torch.load(partial, weights_only=True)
    step = int(state["step"])
    path = CACHE / f"instrument-seg-b1-{recipe_key()}-step{step}.safetensors"
    if not path.exists():
        save_file({k: v.contiguous() for k, v in state["model"].items()}, str(path))
    return path, step


# --------------------------------------------------------------------------- pseudo-labels


def photos(names: tuple[str, ...]) -> dict[str, np.ndarray]:
    conftest = _conftest()
    return {name: conftest._photo(name) for name in names}


def fit_centres(images: list[np.ndarray], k: int, seed: int) -> np.ndarray:
    """k colour centres in CIELAB from a sample of the images' pixels."""
    from scipy.cluster.vq import kmeans2
    from skimage.color import rgb2lab

    rng = np.random.default_rng(seed)
    pixels = np.concatenate([rgb2lab(image).reshape(-1, 3) for image in images])
    sample = pixels[rng.choice(len(pixels), size=min(len(pixels), 200_000), replace=False)]
    centres, _ = kmeans2(sample, k, minit="++", seed=seed)
    return centres.astype(np.float32)


def pseudo_labels(image: np.ndarray, centres: np.ndarray, radius: int) -> np.ndarray:
    """Nearest Lab centre per pixel, smoothed by a modal filter: HxW uint8 class ids."""
    from skimage.color import rgb2lab
    from skimage.filters.rank import modal
    from skimage.morphology import disk

    lab = rgb2lab(image).reshape(-1, 1, 3).astype(np.float32)
    nearest = np.argmin(((lab - centres[None]) ** 2).sum(-1), axis=1).astype(np.uint8)
    return modal(nearest.reshape(image.shape[:2]), disk(radius))


# --------------------------------------------------------------------------- data


def _normalise(image: Any, mean: Any, std: Any) -> Any:
    return (image - mean) / std


def random_batch(images: list[Any], labels: list[Any], rng: np.random.Generator, batch: int,
                 crop: tuple[int, int], mean: Any, std: Any) -> tuple[Any, Any]:
    """Random rescale (with a random horizontal stretch, as the 2:1 eval resize does), crop and flip."""
    import torch
    import torch.nn.functional as F

    xs, ys = [], []
    for _ in range(batch):
        index = int(rng.integers(len(images)))
        image, label = images[index], labels[index]
        h, w = image.shape[-2:]
        height = int(rng.uniform(1.0, 2.5) * crop[0])
        width = max(crop[1], int(height * w / h * rng.uniform(1.0, 2.0)))
        scaled = F.interpolate(image[None], size=(height, width), mode="bilinear", antialias=True,
                               align_corners=False)[0]
        scaled_label = F.interpolate(label[None, None].float(), size=(height, width), mode="nearest")[0, 0].long()
        top, left = int(rng.integers(height - crop[0] + 1)), int(rng.integers(width - crop[1] + 1))
        x = scaled[:, top:top + crop[0], left:left + crop[1]]
        y = scaled_label[top:top + crop[0], left:left + crop[1]]
        if rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        xs.append(_normalise(x, mean, std))
        ys.append(y)
    return torch.stack(xs), torch.stack(ys)


def eval_inputs(images: dict[str, np.ndarray], labels: dict[str, np.ndarray], mean: Any,
                std: Any) -> list[tuple[Any, Any]]:
    """Each photo resized to the eval resolution as verify feeds it; labels at logit resolution."""
    import torch
    import torch.nn.functional as F

    out = []
    for name, image in images.items():
        x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255.0
        x = F.interpolate(x, size=EVAL_RESOLUTION, mode="bicubic", align_corners=False).clamp(0, 1)[0]
        stride = 8
        y = torch.from_numpy(labels[name].astype(np.int64))[None, None].float()
        y = F.interpolate(y, size=(EVAL_RESOLUTION[0] // stride, EVAL_RESOLUTION[1] // stride), mode="nearest")
        out.append((_normalise(x, mean, std)[None], y[0, 0].long()))
    return out


def evaluate(model: Any, inputs: list[tuple[Any, Any]]) -> dict[str, float]:
    """Median top-2 logit gap over all pixels and pixel accuracy against the pseudo-labels."""
    import torch

    gaps, correct, total = [], 0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for x, y in inputs:
            logits = model(x)[0]
            top2 = logits.topk(2, dim=0).values
            gaps.append((top2[0] - top2[1]).flatten())
            correct += int((logits.argmax(0) == y).sum())
            total += y.numel()
    model.train(was_training)
    return {"median_top2_gap": float(torch.cat(gaps).median()), "pixel_accuracy": correct / total}


# --------------------------------------------------------------------------- training


def train(threads: int = 1) -> Path:
    """Fit (or resume) the instrument; ``threads``: PyTorch's, for this run (the result does not
    depend on them beyond float summation order, so a resumed run may use others)."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    from evit_deploy.zoo import create_model, get_card

    torch.set_num_threads(threads)
    torch.manual_seed(RECIPE["seed"])
    conftest = _conftest()
    card = get_card(MODEL)
    mean = torch.tensor(card.preprocessing.mean).view(3, 1, 1)
    std = torch.tensor(card.preprocessing.std).view(3, 1, 1)

    calib = photos(conftest.CALIB_PHOTOS)
    test = photos(conftest.TEST_PHOTOS)
    centres = fit_centres([*calib.values(), *test.values()], RECIPE["clusters"], RECIPE["seed"])
    calib_labels = {n: pseudo_labels(im, centres, RECIPE["modal_radius"]) for n, im in calib.items()}
    test_labels = {n: pseudo_labels(im, centres, RECIPE["modal_radius"]) for n, im in test.items()}
    everything = [*calib.values(), *test.values()]
    train_images = [torch.from_numpy(im).permute(2, 0, 1).float() / 255.0 for im in everything]
    train_labels = [torch.from_numpy(lb.astype(np.int64)) for lb in [*calib_labels.values(), *test_labels.values()]]
    judged = {"test_photos": eval_inputs(test, test_labels, mean, std),
              "calibration_photos": eval_inputs(calib, calib_labels, mean, std)}

    def measure(step: int) -> dict[str, Any]:
        return {"step": step, **{name: evaluate(model, inputs) for name, inputs in judged.items()}}

    init = seeded_weights(BUILDER)
    if init is None:
        raise SystemExit("the instrument starts from the fixtures' seeded weights: shared/reference not found")
    model = create_model(card, weights=init)
    optimiser = torch.optim.Adam(model.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
    steps, warmup = RECIPE["steps"], RECIPE["warmup"]
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))

    partial = CACHE / f"instrument-seg-b1-{recipe_key()}.partial.pt"
    curve: list[dict[str, float]] = []
    evals: list[dict[str, Any]] = []
    start = 0
    if partial.exists():
        state = torch.load(partial, weights_only=True)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        curve, evals, start = json.loads(state["curve"]), json.loads(state["evals"]), int(state["step"])
        print(f"resuming at step {start}", flush=True)
    else:
        evals.append(measure(0))
        print(f"step 0: {evals[-1]}", flush=True)

    model.train()
    began = time.perf_counter()
    for step in range(start, steps):
        rng = np.random.default_rng([RECIPE["seed"], step])
        x, y = random_batch(train_images, train_labels, rng, RECIPE["batch"], tuple(RECIPE["crop"]), mean, std)
        logits = model(x)
        logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimiser.step()
        schedule.step()
        if not math.isfinite(loss.item()):
            raise SystemExit(f"step {step}: loss is {loss.item()}; lower the learning rate")
        curve.append({"step": step + 1, "loss": round(loss.item(), 5), "lr": schedule.get_last_lr()[0]})
        if (step + 1) % 10 == 0:
            rate = (time.perf_counter() - began) / (step + 1 - start)
            print(f"step {step + 1}/{steps} loss {loss.item():.4f} ({rate:.1f} s/step)", flush=True)
        if (step + 1) % EVAL_EVERY == 0 or step + 1 == steps:
            evals.append(measure(step + 1))
            print(f"step {step + 1}: {evals[-1]}", flush=True)
        if (step + 1) % CHECKPOINT_EVERY == 0:
            CACHE.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                        "schedule": schedule.state_dict(), "curve": json.dumps(curve), "evals": json.dumps(evals),
                        "step": step + 1}, partial)

    model.eval()
    path = weights_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(path)
    partial.unlink(missing_ok=True)
    write_result("instrument", {
        "model": MODEL,
        "recipe": RECIPE,
        "recipe_key": recipe_key(),
        "weights": str(path.relative_to(ROOT)),
        "train_photos": [*conftest.CALIB_PHOTOS, *conftest.TEST_PHOTOS],
        "calibration_photos": list(conftest.CALIB_PHOTOS),
        "test_photos": list(conftest.TEST_PHOTOS),
        "eval_resolution": list(EVAL_RESOLUTION),
        "seeded": evals[0],
        "trained": evals[-1],
        "evals": evals,
        "curve": curve,
        "note": "median_top2_gap: median over all logit pixels of (top-1 - top-2 logit) on the whole photos "
                "resized to eval_resolution (training saw 256x512 crops of rescaled photos); pixel_accuracy "
                "against their colour-region pseudo-labels. "
                "Trained on a shared 2-core machine, 1 or 2 PyTorch threads, resumed from checkpoints.",
    })
    return path


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads (a resumed run may change them)")
    print(load_instrument(parser.parse_args().threads))
