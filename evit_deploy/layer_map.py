"""Which artifact tensor is which PyTorch module's output: the layer map a manifest records.

Converters rename tensors, fuse ops and drop the module structure, so the map is made at
export time, while the converter's provenance metadata is still at hand, and written into
the manifest (``details.layer_map``): ``evit debug`` reads it later without the converter.

The rule is the same for every backend. Each artifact node carries the chain of modules it
was traced in (outermost first). A module's nodes are those whose chain contains it; its
*output* is the one tensor those nodes make that something outside the module consumes (or
that the graph returns), and its *inputs* are the non-constant tensors its nodes consume
but do not make. A module with several outputs, or none left after fusion (a Conv's
BatchNorm folded into it keeps only the BatchNorm's scope), is not mapped.

Backends supply the nodes (``onnx/layer_map.py`` from the dynamo exporter's node metadata,
``tflite/layer_map.py`` from tensor names, ``coreml/layer_map.py`` from the FX program).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

MAP_VERSION = 1


@dataclass(frozen=True)
class Scope:
    """One module a node was traced in: its path in the model and its class (qualified name)."""

    path: str
    cls: str


@dataclass(frozen=True)
class TracedNode:
    """An artifact op reduced to what the map needs: tensors in and out, and its module chain."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    scopes: tuple[Scope, ...]  # outermost first; the root module has path ""


@dataclass(frozen=True)
class LayerEntry:
    """One module whose output is one artifact tensor."""

    module: str  # PyTorch module path, e.g. backbone.stages.3.op_list.1.context_module.main.qkv
    cls: str  # its class, qualified (torch.nn.modules.batchnorm.BatchNorm2d, evit_deploy.nn.layers.ConvLayer)
    tensor: str  # the artifact tensor holding the module's output
    inputs: tuple[str, ...]  # artifact tensors feeding the module (for running it alone)
    order: int  # position of the producing op in the artifact's op order: depth

    @property
    def depth(self) -> int:
        """Nesting level: 0 for the root, 1 for ``backbone``, ..."""
        return 0 if not self.module else self.module.count(".") + 1

    @property
    def is_torch_primitive(self) -> bool:
        """A torch.nn building block (Conv2d, BatchNorm2d, Hardswish) rather than one of the model's
        layers; torch's containers (Sequential, ModuleList) hold the model's own structure."""
        return self.cls.startswith("torch.") and not self.cls.startswith("torch.nn.modules.container.")


@dataclass(frozen=True)
class LayerMap:
    """Every mapped module of one artifact, in depth order."""

    source: str  # what the provenance came from, e.g. "onnx: pkg.torch.onnx.name_scopes"
    layers: tuple[LayerEntry, ...]
    #: artifact tensors that hold their module's value times a factor: an exact rewrite moved a
    #: constant factor into the ops that read them (the ONNX int8 HardSwish's 1/6); absent: 1
    scales: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"version": MAP_VERSION, "source": self.source,
                "layers": [{**asdict(e), "inputs": list(e.inputs)} for e in self.layers],
                **({"scales": dict(self.scales)} if self.scales else {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerMap:
        layers = tuple(LayerEntry(module=e["module"], cls=e["cls"], tensor=e["tensor"], inputs=tuple(e["inputs"]),
                                  order=int(e["order"])) for e in data["layers"])
        scales = {str(k): float(v) for k, v in (data.get("scales") or {}).items()}
        return cls(source=str(data["source"]), layers=layers, scales=scales)

    def scale(self, tensor: str) -> float:
        """What the artifact's ``tensor`` holds relative to the module output it stands for."""
        return self.scales.get(tensor, 1.0)

    def scaled(self, scales: dict[str, float]) -> LayerMap:
        """This map with ``scales`` (tensor: factor) recorded as well."""
        return LayerMap(self.source, self.layers, {**self.scales, **scales})

    def restricted_to(self, tensors: Iterable[str]) -> LayerMap:
        """Only the entries whose output tensor still exists (after simplifiers and rewrites);
        inputs that vanished are dropped, which leaves such a module unable to run alone."""
        present = set(tensors)
        kept = tuple(LayerEntry(e.module, e.cls, e.tensor, tuple(i for i in e.inputs if i in present), e.order)
                     for e in self.layers if e.tensor in present)
        return LayerMap(self.source, kept, {t: f for t, f in self.scales.items() if t in present})


def map_modules(nodes: Sequence[TracedNode], graph_outputs: Iterable[str], constants: Iterable[str],
                source: str) -> LayerMap:
    """The layer map of a traced graph (``nodes`` in execution order)."""
    constant = set(constants)
    returned = set(graph_outputs)
    producer = {t: i for i, node in enumerate(nodes) for t in node.outputs}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for t in node.inputs:
            consumers.setdefault(t, []).append(i)
    members: dict[str, list[int]] = {}
    classes: dict[str, str] = {}
    for i, node in enumerate(nodes):
        for scope in node.scopes:
            members.setdefault(scope.path, []).append(i)
            classes.setdefault(scope.path, scope.cls)

    entries = []
    for path, indices in members.items():
        inside = set(indices)
        made = [t for i in indices for t in nodes[i].outputs]
        outputs = [t for t in made
                   if t in returned or any(c not in inside for c in consumers.get(t, ()))]
        if len(outputs) != 1:
            continue
        made_set = set(made)
        inputs: list[str] = []
        for i in indices:
            for t in nodes[i].inputs:
                if t and t not in made_set and t not in constant and t not in inputs:
                    inputs.append(t)
        entries.append(LayerEntry(path, classes[path], outputs[0], tuple(inputs), producer[outputs[0]]))
    entries.sort(key=lambda e: (e.order, -e.depth))
    return LayerMap(source, tuple(entries))


def scoped_by_consumers(nodes: Sequence[TracedNode], which: Iterable[int]) -> list[TracedNode]:
    """``nodes`` with those at ``which`` placed in the modules all their consumers share.

    For ops a converter made up after tracing (a decomposed activation's first steps, a
    quantiser's QUANTIZE/DEQUANTIZE) whose own provenance is missing or copied from the tensor
    they read: placed with their readers, such an op belongs to the layer that needs it, and
    the layer before keeps one output. Walked backwards, so chains of them resolve.
    """
    chosen = set(which)
    scopes = [node.scopes for node in nodes]
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for tensor in node.inputs:
            consumers.setdefault(tensor, []).append(index)
    for index in sorted(chosen, reverse=True):
        readers = [scopes[c] for t in nodes[index].outputs for c in consumers.get(t, [])]
        if readers:
            shared = readers[0]
            for chain in readers[1:]:
                shared = shared[:next((i for i, (a, b) in enumerate(zip(shared, chain)) if a != b),
                                      min(len(shared), len(chain)))]
            scopes[index] = shared
    return [TracedNode(n.inputs, n.outputs, chain) for n, chain in zip(nodes, scopes)]
