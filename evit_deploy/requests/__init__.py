"""One request object per command, shared by the CLI, the Python API and the remote worker.

A field here is the whole declaration of a flag: its type and bounds, its default, its help
text and its flag names. The CLI builds its options from these fields
(``evit_deploy.cli._requests``), the API validates its keyword arguments through them, and the
worker receives them as JSON, so a new flag is declared once and all three agree on what is
valid. A bad value is a ``UsageError`` whose line names the flag, the same for every caller.
"""
from evit_deploy.requests.base import Request, Resolution, cli, describe_error, flag_of
from evit_deploy.requests.deploy import ExportRequest, ProfileRequest, VerifyRequest
from evit_deploy.requests.workflows import (
                                            DEBUG_THRESHOLDS,
                                            BenchmarkRequest,
                                            DebugRequest,
                                            EvalRequest,
                                            LabelledData,
                                            SegmentRequest,
)

__all__ = ["DEBUG_THRESHOLDS", "BenchmarkRequest", "DebugRequest", "EvalRequest", "ExportRequest", "LabelledData",
           "ProfileRequest", "Request", "Resolution", "SegmentRequest", "VerifyRequest", "cli", "describe_error",
           "flag_of"]
