"""A piece of an ONNX graph as a graph of its own: from some of its tensors to another.

``evit debug`` runs a layer alone in such a cut, fed the PyTorch reference's values, to tell
the error a layer adds from the error it inherits.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import onnx


class CutError(Exception):
    """The graph cannot be cut there; ``str(err)`` says why."""


def extractor(model: onnx.ModelProto) -> Any:
    """onnx's extractor of ``model``, its shapes inferred afresh (the extractor cuts only at tensors
    with a type, and a rewritten graph, such as ``quantize_static``'s, keeps the value infos of the
    graph it came from): make it once, for every cut."""
    import onnx

    inferred = onnx.ModelProto()
    inferred.CopyFrom(model)
    del inferred.graph.value_info[:]
    return onnx.utils.Extractor(onnx.shape_inference.infer_shapes(inferred))


def cut(extract: Any, inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    """The nodes that compute ``outputs`` from ``inputs`` (and initializers) alone."""
    try:
        model = extract.extract_model(list(inputs), list(outputs))
    except Exception as err:  # noqa: BLE001 - onnx raises assorted errors for a cut it cannot make
        raise CutError(f"the graph cannot be cut at its inputs ({type(err).__name__})") from None
    known = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
    made = {o for node in model.graph.node for o in node.output}
    loose = sorted({i for node in model.graph.node for i in node.input if i and i not in known and i not in made})
    if loose:
        raise CutError(f"it also reads {loose[0]}, which is not one of its mapped inputs")
    return model
