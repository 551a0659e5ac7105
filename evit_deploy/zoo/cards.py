"""The model card schema: what a zoo model is, how to feed it, how to build it, what was published.

Cards are data (``models/<name>.yaml``, read with ``yaml.safe_load``); this module is only
their validated shape, so ``evit models`` reads them without torch.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from evit_deploy._resources import data_dir
from evit_deploy.errors import UsageError
from evit_deploy.spec import InputSpec

Task = Literal["classification", "segmentation", "sam"]
Dataset = Literal["imagenet", "cityscapes", "ade20k", "sa-1b"]
_TASK_DATASETS: dict[str, tuple[str, ...]] = {
    "classification": ("imagenet",),
    "segmentation": ("cityscapes", "ade20k"),
    "sam": ("sa-1b",),
}
LABELLED_TASKS = ("classification", "segmentation")  # tasks whose output is class logits
_FIGURE = re.compile(r"^(\d+(?:\.\d+)?)([KMG])$")
_UNITS = {"K": 1e3, "M": 1e6, "G": 1e9}

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_figure(text: str) -> float:
    """``"9.1M"`` -> 9.1e6, ``"0.52G"`` -> 5.2e8: a figure as printed by the source."""
    m = _FIGURE.match(text)
    if not m:
        raise ValueError(f"not a figure like '9.1M' or '0.52G': {text!r}")
    return float(m[1]) * _UNITS[m[2]]


def figure_resolution(text: str) -> float:
    """Half a unit of the figure's last printed digit: ``"0.1G"`` -> 5e7, ``"9.1M"`` -> 5e4."""
    m = _FIGURE.match(text)
    if not m:
        raise ValueError(f"not a figure: {text!r}")
    decimals = len(m[1].split(".")[1]) if "." in m[1] else 0
    return 0.5 * 10.0 ** (-decimals) * _UNITS[m[2]]


class Latency(_Strict):
    """One published speed figure, as measured by its source."""

    device: str
    runtime: str
    precision: str
    batch: int | None  # None: the source does not state it
    value: float
    unit: Literal["ms", "img/s"]
    source: str


class Published(_Strict):
    """Figures published for the checkpoint, verbatim; ``source`` tags them (zoo_facts.md)."""

    source: str
    top1: float | None = None
    top5: float | None = None
    miou: float | None = None
    coco_map: float | None = None  # SAM: zero-shot instance segmentation, box prompts from a detector
    lvis_map: float | None = None
    params: str | None = Field(default=None, pattern=_FIGURE.pattern)  # as printed: "9.1M"
    macs: str | None = Field(default=None, pattern=_FIGURE.pattern)  # as printed: "0.52G"
    note: str | None = None
    latency: list[Latency] = Field(default_factory=list)

    @property
    def params_value(self) -> float | None:
        return None if self.params is None else parse_figure(self.params)

    @property
    def macs_value(self) -> float | None:
        return None if self.macs is None else parse_figure(self.macs)

    @property
    def metric(self) -> str:
        """The headline accuracy, e.g. ``top-1 80.41`` or ``mIoU 80.55``; ``-`` when unpublished."""
        if self.top1 is not None:
            return f"top-1 {self.top1:.2f}"
        if self.miou is not None:
            return f"mIoU {self.miou:.2f}"
        if self.coco_map is not None:
            return f"COCO mAP {self.coco_map:.1f}"
        return "-"


class Preprocessing(_Strict):
    """How the official evaluation feeds images (zoo_facts.md section 6); values in 0..1 scale."""

    color: Literal["RGB"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: Literal["shorter_side_center_crop", "fixed", "shorter_side_keep_aspect", "longest_side_pad"]
    resize_shorter: int | None = None  # shorter side before the crop / target shorter side
    crop_ratio: float | None = None  # crop fraction: resize_shorter == ceil(size / crop_ratio)
    resize_to: tuple[int, int] | None = None  # [H, W] for "fixed"
    size_multiple: int | None = None  # long side rounded up to a multiple (keep_aspect)
    resize_longest: int | None = None  # SAM: long side to this, then zero pad bottom/right to pad_to
    pad_to: tuple[int, int] | None = None
    interpolation: Literal["bicubic", "bilinear"]

    @model_validator(mode="after")
    def _fields_for_mode(self) -> Preprocessing:
        need = {
            "shorter_side_center_crop": ("resize_shorter", "crop_ratio"),
            "fixed": ("resize_to",),
            "shorter_side_keep_aspect": ("resize_shorter", "size_multiple"),
            "longest_side_pad": ("resize_longest", "pad_to"),
        }[self.resize]
        optional = ("resize_shorter", "crop_ratio", "resize_to", "size_multiple", "resize_longest", "pad_to")
        for field in need:
            if getattr(self, field) is None:
                raise ValueError(f"resize: {self.resize} needs {field}")
        for field in optional:
            if field not in need and getattr(self, field) is not None:
                raise ValueError(f"resize: {self.resize} does not use {field}")
        return self


class OutputSpec(_Strict):
    """What the model returns: logits, no softmax."""

    name: str = "logits"
    layout: Literal["NC", "NCHW"]
    channels: int
    stride: int | None = None  # output stride of a dense prediction (seg: 8)
    description: str

    def shape(self, input_size: tuple[int, int], batch: int = 1) -> tuple[int, ...]:
        """Output shape for an input of ``input_size`` ([H, W])."""
        if self.layout == "NC":
            return (batch, self.channels)
        stride = self.stride or 1
        return (batch, self.channels, -(-input_size[0] // stride), -(-input_size[1] // stride))


class GraphStats(_Strict):
    """One graph's counts, at the input shapes named in ``inputs`` (its static export's sizes, batch 1)."""

    params: int  # trainable parameters the graph uses
    macs: int
    inputs: dict[str, tuple[int, ...]]


class ComputedStats(_Strict):
    """Counted from the built model by ``scripts/update_card_stats.py`` (checked by the tests).

    A one-graph model gives ``macs`` at ``input_size``; a several-graph model gives ``graphs``
    instead, since its graphs run at different rates (SAM: once per image, once per prompt batch).
    """

    params: int  # trainable parameters of the whole model (BatchNorm running statistics excluded)
    macs: int | None = None  # multiply-accumulates at input_size, batch 1: FlopCounterMode FLOPs / 2
    input_size: tuple[int, int] | None = None
    graphs: dict[str, GraphStats] = Field(default_factory=dict)
    counted_with: str

    @model_validator(mode="after")
    def _one_or_several(self) -> ComputedStats:
        if bool(self.graphs) == (self.macs is not None or self.input_size is not None):
            raise ValueError("give macs and input_size (one graph) or graphs (several), not both")
        if not self.graphs and (self.macs is None or self.input_size is None):
            raise ValueError("a one-graph model's counts need both macs and input_size")
        return self


class GraphTensor(_Strict):
    """One input or output of a graph. Shape entries are sizes, or names of dynamic dims."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    shape: tuple[int | str, ...]
    dtype: Literal["float32"] = "float32"
    layout: Literal["NCHW", "NHWC"] | None = None
    # inputs only, where verify and export take the tensor from: "image" (preprocessed images),
    # "<graph>.<output>" (another graph's output: the reference runs that graph), or "prompts"
    feed: str | None = None
    option: str | None = None  # present only when this model option (the graph's options) is on
    description: str | None = None


class GraphCard(_Strict):
    """One graph a model deploys as: its tensors, the ranges of its dynamic dims, how verify judges it."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    inputs: list[GraphTensor]
    outputs: list[GraphTensor]
    dynamic: dict[str, tuple[int, int]] = Field(default_factory=dict)  # dim name -> (min, max)
    static: dict[str, int] = Field(default_factory=dict)  # dim name -> its size in a static export (default: min)
    options: dict[str, str] = Field(default_factory=dict)  # model option -> what it changes in this graph
    # sizes of the dynamic dims at which ``evit profile`` times a dynamic export (each entry one run)
    profile: list[dict[str, int]] = Field(default_factory=list)
    verify: Literal["logits", "tensor", "sam-masks"]

    @model_validator(mode="after")
    def _dims_and_feeds(self) -> GraphCard:
        names = [t.name for t in self.inputs + self.outputs]
        if len(set(names)) != len(names):
            raise ValueError(f"graph {self.name}: a tensor name is used twice")
        for tensor in self.inputs + self.outputs:
            for dim in tensor.shape:
                if isinstance(dim, str) and dim not in self.dynamic and dim != "batch":
                    raise ValueError(f"graph {self.name}: {tensor.name} has dim {dim!r} without a range in dynamic")
            if tensor.option is not None and tensor.option not in self.options:
                raise ValueError(f"graph {self.name}: {tensor.name} depends on option {tensor.option!r}, "
                                 "which options does not list")
        for tensor in self.inputs:
            if tensor.feed is None:
                raise ValueError(f"graph {self.name}: input {tensor.name} needs feed: image, prompts or GRAPH.OUTPUT")
        for dim, size in self.static.items():
            low, high = self.dynamic.get(dim, (size, size))
            if dim not in self.dynamic or not low <= size <= high:
                raise ValueError(f"graph {self.name}: static {dim} = {size} is not within its dynamic range")
        for sizes in self.profile:
            for dim, size in sizes.items():
                if dim not in self.dynamic and dim != "batch":
                    raise ValueError(f"graph {self.name}: profile names {dim!r}, which is not a dynamic dim")
                low, high = self.dynamic.get(dim, (1, size))
                if not low <= size <= high:
                    raise ValueError(f"graph {self.name}: profile size {dim} = {size} is outside [{low}, {high}]")
        return self

    def inputs_for(self, options: dict[str, bool]) -> list[GraphTensor]:
        """The inputs the graph has with these model options (an option's own inputs only when it is on)."""
        return [t for t in self.inputs if t.option is None or options.get(t.option, False)]

    def static_size(self, dim: str, batch: int = 1) -> int:
        """A named dim's size in a static export: ``batch`` for the batch, else ``static`` or the range's low end."""
        if dim == "batch":
            return batch
        return self.static.get(dim, self.dynamic[dim][0])

    def static_shape(self, tensor: GraphTensor, batch: int = 1) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else self.static_size(d, batch) for d in tensor.shape)


class ModelCard(_Strict):
    """One official zoo model. ``card.classes`` is always the resolved list of class names (empty for SAM)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(pattern=r"^efficientvit-[a-z0-9-]+$")
    task: Task
    family: Literal["B", "L", "XL"]
    variant: str = Field(pattern=r"^(b|l|xl)\d$")
    dataset: Dataset
    builder: str
    builder_kwargs: dict[str, Any] = Field(default_factory=dict)
    norm_eps: float = Field(gt=0)
    num_classes: int | None = Field(default=None, gt=0)  # cls/seg only
    class_names: list[str] | None = Field(default=None, alias="classes")
    classes_file: str | None = None
    input_size: tuple[int, int]
    prompt_frame: int | None = Field(default=None, gt=0)  # SAM: side of the square frame of prompt coordinates
    preprocessing: Preprocessing
    postprocessing: dict[str, str] | None = None  # SAM: how masks and candidates are made (text, for people)
    checkpoint: str
    # The official download address of ``checkpoint`` (its README's model-zoo link), None where it
    # publishes none; evit never downloads it, it only tells a user without the file where it is.
    checkpoint_url: str | None = Field(pattern=r"^https://")
    checkpoint_aliases: list[str] = Field(default_factory=list)  # earlier release names of the same weights
    output: OutputSpec | None = None  # cls/seg only: SAM's outputs are its graphs'
    published: Published
    computed: ComputedStats | None = None
    graphs: list[GraphCard] = Field(default_factory=list)  # empty: one graph, the model itself

    _card_dir: Path | None = PrivateAttr(default=None)
    _resolved_classes: tuple[str, ...] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if self.dataset not in _TASK_DATASETS[self.task]:
            raise ValueError(f"dataset {self.dataset} does not go with task {self.task}")
        if self.variant.rstrip("0123456789").upper() != self.family:
            raise ValueError(f"variant {self.variant} is not in family {self.family}")
        if min(self.input_size) <= 0:
            raise ValueError(f"input_size must be positive: {self.input_size}")
        if self.task in LABELLED_TASKS:
            self._check_labelled()
        else:
            self._check_sam()
        seen: dict[str, set[str]] = {}
        for graph in self.graphs:
            for tensor in graph.inputs:
                source, _, output = (tensor.feed or "").partition(".")
                if output and output not in seen.get(source, set()):
                    raise ValueError(f"graph {graph.name}: input {tensor.name} is fed from {tensor.feed}, which no "
                                     "earlier graph outputs")
            seen[graph.name] = {t.name for t in graph.outputs}
        if len(seen) != len(self.graphs):
            raise ValueError("two graphs share a name")
        if self.computed is not None and self.computed.graphs and set(self.computed.graphs) != set(seen):
            raise ValueError(f"computed.graphs counts {sorted(self.computed.graphs)}, the card's graphs are "
                             f"{sorted(seen)}")
        return self

    def _check_labelled(self) -> None:
        if self.num_classes is None or self.output is None:
            raise ValueError(f"a {self.task} card needs num_classes and output")
        if (self.class_names is None) == (self.classes_file is None):
            raise ValueError("give exactly one of classes (inline) and classes_file")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} classes listed, num_classes is {self.num_classes}")
        if self.output.channels != self.num_classes:
            raise ValueError(f"output.channels {self.output.channels} != num_classes {self.num_classes}")
        if (self.output.layout == "NC") != (self.task == "classification"):
            raise ValueError(f"output.layout {self.output.layout} does not go with task {self.task}")
        if self.prompt_frame is not None or self.postprocessing is not None:
            raise ValueError(f"prompt_frame and postprocessing are for SAM cards, not {self.task}")

    def _check_sam(self) -> None:
        given = [f for f in ("num_classes", "class_names", "classes_file", "output") if getattr(self, f) is not None]
        if given:
            raise ValueError(f"a sam card has no classes or output ({', '.join(given)} given): its graphs say "
                             "what it outputs")
        if self.prompt_frame is None or not self.graphs:
            raise ValueError("a sam card needs prompt_frame and graphs")
        pre = self.preprocessing
        if pre.resize != "longest_side_pad" or pre.pad_to != self.input_size or \
                (pre.resize_longest, pre.resize_longest) != self.input_size:
            raise ValueError(f"a sam card's preprocessing is longest_side_pad to its input_size {self.input_size}")

    def graph(self, name: str) -> GraphCard:
        """The graph called ``name`` (UsageError listing the graphs otherwise)."""
        for graph in self.graphs:
            if graph.name == name:
                return graph
        known = ", ".join(g.name for g in self.graphs) or "none: it exports as one graph"
        raise UsageError(f"{self.name} has no graph {name!r}; its graphs: {known}")

    def checkpoint_source(self) -> str:
        """Where to get the official weights, for a user who lacks them (messages, ``evit models show``)."""
        if self.checkpoint_url is None:
            return (f"no official download address is published for {self.checkpoint} "
                    f"({self.published.note or 'not in the official README'})")
        return f"the official checkpoint {self.checkpoint} is at {self.checkpoint_url} (evit downloads nothing)"

    @property
    def classes(self) -> list[str]:
        """Class names in output-channel order (read from ``classes_file`` when the card names one)."""
        if self.class_names is not None:
            return list(self.class_names)
        if self.classes_file is None:
            return []
        if self._resolved_classes is None:
            path = (self._card_dir or data_dir("models")) / str(self.classes_file)
            try:
                names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            except OSError as err:
                raise UsageError(f"model card {self.name}: cannot read classes_file {path}: {err}") from None
            if len(names) != self.num_classes:
                raise UsageError(f"model card {self.name}: {path} lists {len(names)} classes, "
                                 f"num_classes is {self.num_classes}")
            self._resolved_classes = tuple(names)
        return list(self._resolved_classes)

    def input_spec(self, resolution: tuple[int, int] | None = None, batch: int = 1,
                   dynamic: bool = False) -> InputSpec:
        """The input an export of this model takes, preprocessed as the card says."""
        height, width = resolution or tuple(self.input_size)
        pre = self.preprocessing
        extra: dict[str, Any] = {"task": self.task}
        if self.task == "classification" and pre.crop_ratio:
            extra["crop_ratio"] = pre.crop_ratio
        if pre.resize == "longest_side_pad":
            extra["resize"] = pre.resize
        return InputSpec(batch=batch, height=height, width=width, mean=tuple(pre.mean), std=tuple(pre.std),
                         color=pre.color, dynamic=dynamic, extra=extra)

    @property
    def output_shape(self) -> tuple[int, ...] | None:
        """Output shape at the card's input size, batch 1 (None for a model whose graphs give several)."""
        return self.output.shape(self.input_size) if self.output is not None else None

    @property
    def params(self) -> int | None:
        """Counted trainable parameters (from the ``computed:`` block)."""
        return self.computed.params if self.computed else None

    @property
    def macs(self) -> int | None:
        """Counted MACs at ``input_size``; a several-graph model's first graph's (SAM: the image encoder,
        the figure SAM papers publish)."""
        if self.computed is None:
            return None
        if self.computed.graphs:
            return self.computed.graphs[self.graphs[0].name].macs
        return self.computed.macs

    def to_dict(self, *, resolve_classes: bool = True) -> dict[str, Any]:
        """JSON-ready dict of every field (``classes`` resolved unless told otherwise)."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=False)
        if resolve_classes and self.task in LABELLED_TASKS:
            data["classes"] = self.classes
        return data
