"""The layer map of an ONNX graph from the dynamo exporter's node metadata
(``pkg.torch.onnx.name_scopes`` and ``pkg.torch.onnx.class_hierarchy``, torch 2.13)."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import TYPE_CHECKING

from evit_deploy.layer_map import LayerMap, Scope, TracedNode, map_modules

if TYPE_CHECKING:  # pragma: no cover
    import onnx

ONNX_SCOPES = "pkg.torch.onnx.name_scopes"
ONNX_CLASSES = "pkg.torch.onnx.class_hierarchy"


def onnx_layer_map(model: onnx.ModelProto) -> LayerMap:
    """The map of a graph straight from ``torch.onnx.export(dynamo=True)``.

    Read it before any simplifier: onnxslim drops node metadata (it keeps tensor names, so
    ``LayerMap.restricted_to`` the final graph's tensors is what the manifest records). A graph
    without the metadata (the TorchScript exporter) gives an empty map.
    """
    nodes = []
    for node in model.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        nodes.append(TracedNode(tuple(node.input), tuple(node.output), _onnx_scopes(props)))
    constants = {init.name for init in model.graph.initializer}
    constants |= {o for node in model.graph.node if node.op_type == "Constant" for o in node.output}
    return map_modules(nodes, [o.name for o in model.graph.output], constants, f"onnx: {ONNX_SCOPES}")


def onnx_file_layer_map(path: Path) -> LayerMap:
    """The map of a saved graph whose nodes still carry the exporter's metadata (every rewrite
    evit makes keeps it: fp16 casts, Q/DQ; a simplifier does not, which leaves the map empty)."""
    import onnx

    return onnx_layer_map(onnx.load(str(path), load_external_data=False))


def onnx_tensor_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor an ONNX graph computes or takes (what a map may point at)."""
    names = {o for node in model.graph.node for o in node.output}
    return names | {i.name for i in model.graph.input} | {o.name for o in model.graph.output}


def module_nodes(graph: onnx.ModelProto, path: str) -> list[str]:
    """The nodes torch's exporter traced inside the module at ``path``."""
    return [n.name for n in graph.graph.node if path in module_scopes(n)]


def module_scopes(node: onnx.NodeProto) -> list[str]:
    """The module paths torch's exporter recorded for ``node``, outermost first (empty if none)."""
    for prop in node.metadata_props:
        if prop.key == ONNX_SCOPES:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return []
            return [s for s in scopes[:-1] if s]  # the last one is the traced op, not a module
    return []


def _onnx_scopes(props: dict[str, str]) -> tuple[Scope, ...]:
    """``name_scopes`` ['', 'backbone', ..., 'add'] with the matching classes; the last item names
    the op itself (an FX node), not a module."""
    if ONNX_SCOPES not in props or ONNX_CLASSES not in props:
        return ()
    try:
        paths, classes = ast.literal_eval(props[ONNX_SCOPES]), ast.literal_eval(props[ONNX_CLASSES])
    except (ValueError, SyntaxError):
        return ()
    if not isinstance(paths, list) or not isinstance(classes, list) or len(paths) != len(classes):
        return ()
    return tuple(Scope(str(p), str(c)) for p, c in zip(paths[:-1], classes[:-1]))
