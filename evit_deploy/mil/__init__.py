"""A numpy interpreter for Core ML ML programs (MIL), so Linux can check what a converter wrote.

Core ML itself runs only on Apple platforms. This package reads an ``.mlpackage``'s program
(protobuf + weight file) and evaluates its operations with numpy, honouring every fp16 cast
the program contains. It checks the *converter's* output, not Apple's kernels: results match
what Core ML computes up to kernel-level rounding. It never imports PyTorch or coremltools'
converters, so it runs wherever numpy and protobuf do.
"""
from evit_deploy.mil.interpreter import Interpreter, MilError, UnsupportedOp, unknown_ops
from evit_deploy.mil.ops import supported
from evit_deploy.mil.program import Operation, Program, TensorType, load_program

__all__ = ["Interpreter", "MilError", "Operation", "Program", "TensorType", "UnsupportedOp", "load_program",
           "supported", "unknown_ops"]
