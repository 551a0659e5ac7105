"""The wire format between evit and its worker on a device, over an ssh session's pipes.

A message is one header line ``EVIT1 {json}\\n`` followed by ``header["payload"]`` raw
bytes (an .npz of arrays, or a tar of artifact files). Lines before the first header
are noise some login shells print (motd, ``echo`` in .bashrc) and are skipped. The
worker keeps stdout for messages only: everything else it or a runtime prints goes to
stderr, where ``PROGRESS`` lines report timed iterations. No pickles travel: arrays are
loaded with ``allow_pickle=False``.
"""
from __future__ import annotations

import io
import json
from typing import IO, Any

import numpy as np

PROTOCOL = 1
MAGIC = b"EVIT1 "
PROGRESS = "EVIT-PROGRESS"


class ProtocolError(Exception):
    """The other side closed the stream or sent something that is not a message."""

    def __init__(self, message: str, noise: list[str] | None = None) -> None:
        super().__init__(message)
        self.noise = noise or []


def write_message(stream: IO[bytes], header: dict[str, Any], payload: bytes = b"") -> None:
    line = MAGIC + json.dumps({**header, "payload": len(payload)}, separators=(",", ":")).encode() + b"\n"
    stream.write(line)
    if payload:
        stream.write(payload)
    stream.flush()


def read_message(stream: IO[bytes], *, max_noise: int = 200) -> tuple[dict[str, Any], bytes]:
    noise: list[str] = []
    while True:
        line = stream.readline()
        if not line:
            raise ProtocolError("the stream ended before a message", noise)
        if line.startswith(MAGIC):
            break
        if len(noise) < max_noise:
            noise.append(line.decode(errors="replace").rstrip())
    try:
        header = json.loads(line[len(MAGIC):])
    except ValueError:
        raise ProtocolError("a malformed message header", noise) from None
    size = int(header.get("payload", 0))
    payload = _read_exact(stream, size) if size else b""
    return header, payload


def _read_exact(stream: IO[bytes], size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise ProtocolError(f"the stream ended {left} bytes short of a {size}-byte payload")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def pack_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
    return buffer.getvalue()


def unpack_arrays(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def progress_line(done: int, total: int) -> str:
    return f"{PROGRESS} {done} {total}"


def parse_progress(line: str) -> tuple[int, int] | None:
    if not line.startswith(PROGRESS + " "):
        return None
    try:
        done, total = line.split()[1:3]
        return int(done), int(total)
    except ValueError:
        return None
