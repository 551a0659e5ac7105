"""The layer map of a Core ML ML program converted from ``torch.export``.

coremltools names each MIL op's output after the FX node it came from (``hardswish_3``,
``_native_batch_norm_legit_no_training_5`` for a conv with its BatchNorm folded in), and the
exported program's nodes carry their full module stack (``nn_module_stack``). Ops coremltools
made up while decomposing one FX node (hardswish -> thresholded_relu, sigmoid_hard, mul) have
new names; only the last keeps the node's, so the others are placed with their consumers.
Constants (``const`` ops, and ops computed from constants only) are no layer's inputs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from evit_deploy.layer_map import LayerMap, Scope, TracedNode, map_modules, scoped_by_consumers

if TYPE_CHECKING:  # pragma: no cover
    from evit_deploy.mil.program import Program

SOURCE = "coreml: MIL op names = torch.export node names, nn_module_stack"


def fx_scopes(exported: Any, root: str, prefix: str = "") -> dict[str, tuple[Scope, ...]]:
    """FX node name -> module chain (root first) of an ExportedProgram. ``prefix``: the path of the
    model inside a wrapper (``inner.`` for the image-input wrapper), stripped; the wrapper's own
    ops belong to the root."""
    scopes: dict[str, tuple[Scope, ...]] = {}
    for node in exported.graph.nodes:
        if node.op != "call_function":
            continue
        chain = [Scope("", root)]
        for path, cls in node.meta.get("nn_module_stack", {}).values():
            if prefix and not str(path).startswith(prefix):
                continue
            chain.append(Scope(str(path)[len(prefix):], cls if isinstance(cls, str) else
                               f"{cls.__module__}.{cls.__qualname__}"))
        scopes[node.name] = tuple(chain)
    return scopes


def mil_layer_map(program: Program, exported: Any, model: Any, prefix: str = "") -> LayerMap:
    """The map of a saved ML program converted from ``exported`` (the ExportedProgram of ``model``,
    or of a wrapper holding it at ``prefix``).

    The op making the program's output is renamed to it (``logits``) and so loses its node: the
    module owning its weights gives it back (else it is the model's own).
    """
    root = f"{type(model).__module__}.{type(model).__qualname__}"
    scopes = fx_scopes(exported, root, prefix)
    owners = parameter_scopes(exported, model, root, prefix)
    returned = set(program.outputs)
    constants: set[str] = set()
    nodes: list[TracedNode] = []
    unscoped: list[int] = []
    for op in program.operations:
        inputs = tuple(b for bound in op.inputs.values() for b in bound if isinstance(b, str))
        outputs = tuple(name for name, _ in op.outputs)
        if op.type == "const" or all(i in constants for i in inputs):
            constants.update(outputs)
            continue
        # fp16 programs name an op's output <node>_cast_fp16; a precision cast (<var>_to_fp16) is a
        # conversion placed with its readers, like a decomposition's first steps
        chain = scopes.get(_node_name(outputs[0])) if outputs and op.type != "cast" else None
        if chain is None and returned.intersection(outputs):  # renamed to the output: its weights know
            owned = [owners[_node_name(i)] for i in inputs if i in constants and _node_name(i) in owners]
            chain = owned[0] if owned else (Scope("", root),)
        if chain is None:
            unscoped.append(len(nodes))
        nodes.append(TracedNode(inputs, outputs, chain or ()))
    return map_modules(scoped_by_consumers(nodes, unscoped), program.outputs, constants, SOURCE)


def parameter_scopes(exported: Any, model: Any, root: str, prefix: str = "") -> dict[str, tuple[Scope, ...]]:
    """Parameter placeholder name (``p_head_output_ops_0_op_list_1_conv_weight``, what coremltools
    names the weight's const) -> the chain of the module owning it."""
    owners: dict[str, tuple[Scope, ...]] = {}
    for placeholder, target in exported.graph_signature.inputs_to_parameters.items():
        path = target.rpartition(".")[0]
        if prefix and not path.startswith(prefix):
            continue
        path = path[len(prefix):]
        chain = [Scope("", root)]
        parts = path.split(".") if path else []
        for depth in range(1, len(parts) + 1):
            sub = ".".join(parts[:depth])
            try:
                module = model.get_submodule(sub)
            except AttributeError:  # inside a module swapped before export (bicubic rewrite)
                break
            chain.append(Scope(sub, f"{type(module).__module__}.{type(module).__qualname__}"))
        owners[placeholder] = tuple(chain)
    return owners


def _node_name(var: str) -> str:
    for suffix in ("_cast_fp16", "_cast_fp32", "_to_fp16", "_to_fp32"):
        if var.endswith(suffix):
            return var[: -len(suffix)]
    return var
