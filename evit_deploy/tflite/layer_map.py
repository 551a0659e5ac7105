"""The layer map of a .tflite from litert-torch: module paths read back from its tensor names.

litert-torch names each tensor after the module stack of the op that made it, one
``<class>_<name>`` per module, joined by ``/`` (``…EfficientViTSeg_wrapped/…OpSequential_0/
…ResidualBlock_1/…MBConv_main/…``), where ``<name>`` is only the *last* part of the module's
path and ModuleLists do not appear (litert_torch/backend/debuginfo/_build.py). So the path is
recovered by walking the PyTorch module tree from the root, matching each part against a
module's called children (ModuleLists flattened). Where two subtrees read alike (the seg
head's ``input_ops.0`` and ``output_ops.0`` are both ``OpSequential_0``), the candidate that
comes next in the model's own module order after the previous op's module wins: ops are
written in execution order. Fused ops carry several locations (``a;;b;2``): the first is the
op's own (a Conv with its BatchNorm folded in carries the BatchNorm's, as in ONNX).
ai-edge-quantizer's tensors (``…_quantized``, ``…_dequant``) and evit's float-island mark
(``/evit_float``) keep the name they were made from; a QUANTIZE/DEQUANTIZE is placed with
the ops that read it, so an output's quantisation belongs to the layer reading it (as Q/DQ
nodes do in ONNX) and a layer's output is the tensor its own op made. The last
op is renamed to the signature's output (``serving_default_output_0``) and so loses its
stack: its weights, named after their module, give it back (else it is the model's own).

Tensors are identified by their index in the main subgraph: names need not be unique.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from evit_deploy.layer_map import LayerMap, Scope, TracedNode, map_modules, scoped_by_consumers

if TYPE_CHECKING:  # pragma: no cover
    import torch

SOURCE = "tflite: litert-torch tensor names"
SUFFIXES = ("/evit_float", "_quantized", "_dequant")  # added after conversion, innermost last


@dataclass
class _Module:
    cls: str
    order: int
    children: list[tuple[str, str]] = field(default_factory=list)  # (path, last part of the name)


def module_tree(model: torch.nn.Module) -> dict[str, _Module]:
    """Every module by path, with the children a forward calls (a ModuleList's items, not the list)."""
    from torch import nn

    tree: dict[str, _Module] = {}
    for order, (path, module) in enumerate(model.named_modules()):
        tree[path] = _Module(f"{type(module).__module__}.{type(module).__qualname__}", order)

    def called(prefix: str, module: nn.Module) -> list[tuple[str, str]]:
        found = []
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
                found += called(path, child)
            else:
                found.append((path, name))
        return found

    for path, module in model.named_modules():
        tree[path].children = called(path, module)
    return tree


def location(name: str) -> list[str]:
    """A tensor name's module stack parts, from its first location ([] for the model's input)."""
    changed = True
    while changed:
        changed = False
        for suffix in SUFFIXES:
            if name.endswith(suffix):
                name, changed = name[: -len(suffix)], True
    first = next((part for part in name.split(";") if part and not part.isdigit()), "")
    return first.split("/") if "/" in first or "." in first else []


def _candidates(parts: list[str], tree: dict[str, _Module]) -> list[tuple[Scope, ...]]:
    """Every module chain (root first) the parts can name; several when subtrees read alike."""
    root = tree[""].cls
    start = next((i for i, p in enumerate(parts) if p == root or p.startswith(root + "_")), None)
    if start is None:
        return []
    chains: list[tuple[Scope, ...]] = [(Scope("", root),)]
    for part in parts[start + 1:]:
        grown = []
        for chain in chains:
            children = tree[chain[-1].path].children
            exact = [(p, n) for p, n in children if part == f"{tree[p].cls}_{n}"]
            # a module swapped before conversion (bicubic -> BicubicUpsample) keeps its name only
            renamed = [(p, n) for p, n in children if part.endswith(f"_{n}")] if not exact else []
            for path, last in exact or (renamed if len(renamed) == 1 else []):
                grown.append((*chain, Scope(path, part[: -len(last) - 1])))
        if not grown:
            break  # inside a module the PyTorch model does not have: the chain ends at its parent
        chains = grown
    return chains


def tflite_layer_map(content: bytes, model: torch.nn.Module) -> LayerMap:
    """The map of a .tflite converted from ``model`` (ops of the main subgraph, in file order)."""
    return layer_map_and_op_modules(content, model)[0]


def layer_map_and_op_modules(content: bytes, model: torch.nn.Module) -> tuple[LayerMap, list[str | None]]:
    """The map, and per op of the main subgraph the PyTorch module (path) that runs it: the
    innermost one the model has, so an op inside a module swapped at conversion, or one of several
    a module's forward writes, is still placed; None outside every module, '' for the model itself."""
    ops, scopes, outputs, constants = _traced(content, model)
    nodes = [TracedNode(tuple(map(str, inputs)), tuple(map(str, op_outputs)), chain)
             for (inputs, op_outputs, _), chain in zip(ops, scopes)]
    # ai-edge-quantizer names a conversion after the tensor it converts, which would put the
    # DEQUANTIZE feeding an attention island into the qkv conv before it (two outputs)
    nodes = scoped_by_consumers(nodes, [i for i, (_, _, code) in enumerate(ops) if code in _conversions()])
    return map_modules(nodes, outputs, constants, SOURCE), [chain[-1].path if chain else None for chain in scopes]


def _traced(content: bytes, model: torch.nn.Module) -> tuple[list[tuple[list[int], list[int], int]],
                                                              list[tuple[Scope, ...]], list[str], set[str]]:
    """The main subgraph's ops (inputs, outputs, builtin code), each op's module chain, the
    graph's outputs and its constant tensors (by index)."""
    from ai_edge_litert.tools import flatbuffer_utils

    flat = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    subgraph = flat.subgraphs[0]
    tree = module_tree(model)

    def name(index: int) -> str:
        raw = subgraph.tensors[index].name
        return raw.decode() if isinstance(raw, bytes) else (raw or "")

    returned = {int(t) for t in subgraph.outputs}
    constants = {str(i) for i, tensor in enumerate(subgraph.tensors)
                 if tensor.buffer > 0 and flat.buffers[tensor.buffer].data is not None
                 and len(flat.buffers[tensor.buffer].data) > 0}
    ops = [([int(t) for t in op.inputs if t >= 0], [int(t) for t in op.outputs if t >= 0],
            flatbuffer_utils.get_builtin_code_from_operator_code(flat.operatorCodes[op.opcodeIndex]))
           for op in subgraph.operators]
    scopes: list[tuple[Scope, ...]] = []
    pointer = 0
    for inputs, outputs, _ in ops:
        chains = _candidates(location(name(outputs[0])), tree) if outputs else []
        if not chains and any(t in returned for t in outputs):
            # renamed to its signature output: its weights still carry its module's name
            owner = [parts for t in inputs if str(t) in constants and (parts := location(name(t)))]
            chains = _candidates(owner[0], tree) if owner else [(Scope("", tree[""].cls),)]
        if len(chains) > 1:  # alike subtrees: the next in module order after the previous op's module
            later = [c for c in chains if tree[c[-1].path].order >= pointer]
            chains = [min(later, key=lambda c: tree[c[-1].path].order) if later
                      else max(chains, key=lambda c: tree[c[-1].path].order)]
        scopes.append(chains[0] if chains else ())
        if scopes[-1]:
            pointer = tree[scopes[-1][-1].path].order
    return ops, scopes, [str(t) for t in subgraph.outputs], constants



def _conversions() -> set[int]:
    from ai_edge_litert import schema_py_generated as schema

    return {schema.BuiltinOperator.QUANTIZE, schema.BuiltinOperator.DEQUANTIZE}
