"""Export recipes: YAML files in ``export_configs/`` plus CLI overrides, validated.

A recipe is every decision an export makes, so the manifest can record it resolved
and a colleague can reproduce the artifact from the recipe alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from evit_deploy._resources import data_dir
from evit_deploy.errors import UsageError
from evit_deploy.spec import Precision
from evit_deploy.textfile import load_yaml


class Tolerances(BaseModel):
    """Pass criteria of ``verify``; a criterion left at None is reported, not enforced.

    ``max_rel`` is max|artifact - reference| / max|reference| per output: relative to the
    output's scale, so near-zero logits do not dominate (elementwise relative error does).
    ``atol``/``rtol`` add an allclose-style check on every element.
    """

    model_config = ConfigDict(extra="forbid")

    max_rel: float | None = Field(None, ge=0, description="Max |error| / max |reference| per output.")
    atol: float | None = Field(None, ge=0, description="Absolute tolerance per element (with --rtol).")
    rtol: float | None = Field(None, ge=0, description="Relative tolerance per element (with --atol).")
    cosine: float | None = Field(None, ge=-1, le=1, description="Least cosine similarity per output.")
    pixel_agreement: float | None = Field(None, ge=0, le=1, description="Least share of pixels with the same class.")
    miou: float | None = Field(None, ge=0, le=1, description="Least mIoU of the artifact's classes vs the reference's.")
    top1_agreement: float | None = Field(None, ge=0, le=1, description="Least share of samples with the same top-1.")
    top5_agreement: float | None = Field(None, ge=0, le=1, description="Least share whose reference top-1 is in the artifact's top-5.")
    mask_iou: float | None = Field(None, ge=0, le=1, description="SAM: least mean IoU of the masks (logits > 0, 256x256) per prompt and mask token.")
    mask_iou_image: float | None = Field(None, ge=0, le=1, description="SAM: least mean IoU of each prompt's best mask upscaled to the image.")
    iou_prediction_error: float | None = Field(None, ge=0, description="SAM: most |error| of a predicted mask IoU (score).")
    best_mask_agreement: float | None = Field(None, ge=0, le=1, description="SAM: least share of prompts whose best-scored mask token is the reference's.")


DEFAULT_TOLERANCES: dict[Precision, Tolerances] = {
    Precision.FP32: Tolerances(max_rel=1e-4, cosine=0.99999, pixel_agreement=0.999, top1_agreement=1.0,
                               mask_iou=0.999, mask_iou_image=0.999, iou_prediction_error=1e-3,
                               best_mask_agreement=0.99),
    Precision.FP16: Tolerances(max_rel=5e-2, cosine=0.999, pixel_agreement=0.999, top1_agreement=0.99,
                               mask_iou=0.99, mask_iou_image=0.99, iou_prediction_error=2e-2,
                               best_mask_agreement=0.95),
    Precision.INT8: Tolerances(cosine=0.95, pixel_agreement=0.99, top1_agreement=0.95,
                               mask_iou=0.9, mask_iou_image=0.9, iou_prediction_error=0.1, best_mask_agreement=0.8),
}
# Runtimes whose arithmetic is not the precision's own: a runner names its profile
# (``Runner.tolerance_profile``) and the recipe's ``runtime_tolerances`` (else these) apply to it.
# "accelerated": Core ML on the GPU or Neural Engine, which compute in fp16 whatever the program's
# precision, so an fp32 program there is held to fp16's criteria, not the CPU's 1e-4.
DEFAULT_RUNTIME_TOLERANCES: dict[tuple[Precision, str], Tolerances] = {
    (Precision.FP32, "accelerated"): DEFAULT_TOLERANCES[Precision.FP16],
}


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Path | None = None  # an image folder
    samples: int = Field(64, ge=1)


class LabelledData(BaseModel):
    """The labelled images ``--max-drop`` scores int8 candidates on (the layouts ``evit eval`` reads)."""

    model_config = ConfigDict(extra="forbid")

    source: Path | None = None  # a dataset folder
    format: str | None = None  # cityscapes, ade20k, masks, imagefolder (default: detected)
    limit: int | None = Field(None, ge=1)  # the first N samples only
    classes: Path | None = None  # masks: the classes YAML; imagefolder: an index file


class Recipe(BaseModel):
    """One export, fully decided. ``options`` is validated by the target's own model."""

    model_config = ConfigDict(extra="forbid")

    target: str = "onnx"
    precision: Precision = Precision.FP32
    resolution: tuple[int, int] | None = None  # None: the model card's input size
    batch: int = Field(1, ge=1)
    dynamic: bool = False
    calibration: Calibration = Field(default_factory=Calibration)
    data: LabelledData = Field(default_factory=LabelledData)
    tolerances: Tolerances | None = None  # None: DEFAULT_TOLERANCES[precision]
    runtime_tolerances: dict[str, Tolerances] = Field(default_factory=dict)  # profile -> criteria (see above)
    options: dict[str, Any] = Field(default_factory=dict)
    model_options: dict[str, bool] = Field(default_factory=dict)  # a several-graph model's (card graphs: options)
    description: str = ""

    @field_validator("resolution")
    @classmethod
    def _multiple_of_32(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None:
            h, w = value
            if h <= 0 or w <= 0 or h % 32 or w % 32:
                raise ValueError(
                    f"resolution {h}x{w} is not a multiple of 32 (EfficientViT downsamples 32x); "
                    f"try {max(32, round(h / 32) * 32)}x{max(32, round(w / 32) * 32)}"
                )
        return value

    def resolved_tolerances(self, profile: str | None = None) -> Tolerances:
        """The criteria for a runner with this tolerance ``profile`` (None: the precision's own)."""
        if profile is not None and profile in self.runtime_tolerances:
            return self.runtime_tolerances[profile]
        if profile is not None and (self.precision, profile) in DEFAULT_RUNTIME_TOLERANCES:
            return DEFAULT_RUNTIME_TOLERANCES[self.precision, profile]
        return self.tolerances if self.tolerances is not None else DEFAULT_TOLERANCES[self.precision]


def parse_resolution(text: str) -> tuple[int, int]:
    """'512x1024' or '224' -> (H, W), checked to be a multiple of 32."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"resolution {text!r} is not HxW (e.g. 512x1024) or a single size (e.g. 224)") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise UsageError(f"resolution {text!r} is not HxW (e.g. 512x1024)")
    h, w = values
    if h <= 0 or w <= 0 or h % 32 or w % 32:
        raise UsageError(
            f"resolution {h}x{w} is not a multiple of 32 (EfficientViT downsamples 32x); "
            f"try {max(32, round(h / 32) * 32)}x{max(32, round(w / 32) * 32)}"
        )
    return h, w


def _format_validation(err: ValidationError, origin: str) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"{origin}: unknown recipe field {where!r}; check its spelling (see export_configs/ for examples)"
    return f"{origin}: invalid recipe field {where!r}: {first['msg']}"


def recipe_path(config: str | Path) -> Path:
    """A recipe file, by path or by the name of a shipped recipe (``onnx-fp16``)."""
    path = Path(config)
    if path.is_file():
        return path
    shipped = data_dir("export_configs")
    for candidate in (shipped / path.name, shipped / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    names = ", ".join(sorted(p.stem for p in shipped.glob("*.yaml")))
    raise UsageError(f"recipe {config!r} not found; give a YAML path or a shipped recipe: {names}")


def load_recipe(config: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Recipe:
    """Recipe from YAML (optional) with CLI overrides applied on top, validated once."""
    data: dict[str, Any] = {}
    origin = "recipe"
    if config is not None:
        path = recipe_path(config)
        origin = str(path)
        loaded = load_yaml(path, "recipe")
        if not isinstance(loaded, dict):
            raise UsageError(f"{path}: a recipe is a YAML mapping of fields (target, precision, ...)")
        data.update(loaded)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "options":
            data["options"] = {**data.get("options", {}), **value}
        elif key in ("calibration", "data"):
            data[key] = {**data.get(key, {}), **value}
        elif key == "tolerances":
            data["tolerances"] = {**(data.get("tolerances") or {}), **value}
        else:
            data[key] = value
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise UsageError(_format_validation(err, origin)) from None


def validate_options(recipe: Recipe, model: type[BaseModel], origin: str = "recipe") -> BaseModel:
    """The recipe's ``options`` checked against a target's options model."""
    try:
        return model.model_validate(recipe.options)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(["options", *(str(p) for p in first["loc"])])
        if first["type"] == "extra_forbidden":
            allowed = ", ".join(model.model_fields) or "none"
            raise UsageError(f"{origin}: unknown recipe field {where!r} for target {recipe.target!r} (allowed: {allowed})") from None
        raise UsageError(f"{origin}: invalid recipe field {where!r}: {first['msg']}") from None
