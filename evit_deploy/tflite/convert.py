"""PyTorch -> fp32 flatbuffer with litert-torch (bicubic rewritten, NHWC if asked), cached per process."""
from __future__ import annotations

import copy
import hashlib
import json
from typing import TYPE_CHECKING, Any

from evit_deploy.spec import GraphIO
from evit_deploy.tflite.logs import native_logs_quiet
from evit_deploy.tflite.options import TfliteOptions
from evit_deploy.toolchain import toolchain_error

if TYPE_CHECKING:
    import torch

_FP32_CACHE: dict[str, bytes] = {}  # conversion is the slow step (~0.5-1.5 min); reuse per process


def _model_key(model: torch.nn.Module, io: GraphIO, options: TfliteOptions) -> str:
    digest = hashlib.sha256()
    digest.update(type(model).__qualname__.encode())
    digest.update(repr(model).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    shapes = [list(i.shape) for i in io.inputs]
    digest.update(json.dumps([shapes[0] if len(shapes) == 1 else shapes, options.layout, options.bicubic]).encode())
    return digest.hexdigest()


def convert_fp32(model: torch.nn.Module, io: GraphIO, options: TfliteOptions) -> tuple[bytes, dict[str, Any]]:
    """The fp32 flatbuffer of ``model`` for ``io`` (bicubic rewritten, NHWC for 4-D tensors if asked).

    ``info["output_rank"]``: the rank of the output (a list of them for several outputs)."""
    import torch

    from evit_deploy.convert.bicubic import bicubic_upsample_layers, replace_bicubic_upsampling

    module = copy.deepcopy(model).eval()
    examples = tuple(torch.zeros(i.shape) for i in io.inputs)  # a static export: sized resizes are factors here
    bicubic = bicubic_upsample_layers(module, examples)
    info: dict[str, Any] = {"bicubic_layers": len(bicubic)}
    if bicubic:
        if options.bicubic == "exact":
            replace_bicubic_upsampling(module, examples)
            info["bicubic"] = ("exact rewrite: edge pad + depthwise 5x5 conv + pixel shuffle "
                               "(evit_deploy.convert.bicubic), ~1e-7 from F.interpolate")
        else:
            info["bicubic"] = "litert-torch lowering of upsample_bicubic2d (GATHER_ND/BROADCAST_TO/MUL)"
    with native_logs_quiet():
        import litert_torch  # its import logs torchao/pytree warnings to stderr

    key = _model_key(module, io, options)
    examples = list(examples)
    with torch.no_grad():
        produced = module(*examples)
    ranks = [t.dim() for t in (produced if isinstance(produced, (tuple, list)) else (produced,))]
    if options.layout == "nhwc":
        four_d = [index for index, example in enumerate(examples) if example.dim() == 4]
        module = litert_torch.to_channel_last_io(module, args=four_d, outputs=[j for j, r in enumerate(ranks) if r == 4])
        examples = [e.permute(0, 2, 3, 1).contiguous() if i in four_d else e for i, e in enumerate(examples)]
    if key not in _FP32_CACHE:
        with native_logs_quiet() as logs:
            litert_torch.config.show_progress = False
            try:
                edge = litert_torch.convert(module.eval(), tuple(examples))
                content = edge.model_content()  # serialisation happens here (and logs)
            except Exception as err:  # noqa: BLE001 - the converter raises many types: exit 3, the log kept
                raise toolchain_error("litert-torch", "to convert the model", err, logs) from None
        _FP32_CACHE.clear()  # one model at a time: flatbuffers of big models are large
        _FP32_CACHE[key] = content
    info["output_rank"] = ranks[0] if len(ranks) == 1 else ranks
    return _FP32_CACHE[key], info
