"""The device side: what ``evit _worker OP ...`` (or ``python -m evit_deploy.remote.worker``) does.

It runs on the device, started by the host over ssh, and answers with protocol messages
on stdout (``protocol.py``). It never imports torch: the device needs evit, numpy and
the artifact's runtime, nothing else. Operations:

- ``hello``: versions, device state, the target's runtime, and whether an artifact is
  already in the content-addressed store (``--probe DIR --expect JSON``).
- ``receive DIR``: a tar of artifact files on stdin -> DIR, checked against the manifest's
  hashes and moved into place atomically (concurrent uploads of one artifact are safe).
- ``profile ARTIFACT ...``: ``evit profile`` there; the result as JSON.
- ``serve ARTIFACT``: load a runner once, then answer ``run`` requests (npz in, npz out)
  until ``close``; ``verify --device`` compares its outputs with PyTorch on the host.
- ``fetch DIR``: a tar of DIR's files (engines built on the device come back this way).
- ``build-trt ...``: build a TensorRT engine from an uploaded artifact (see ``trt_build``).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO, Any

from evit_deploy.errors import EvitError, RuntimeMissing, UsageError
from evit_deploy.remote.protocol import PROTOCOL, ProtocolError, progress_line, read_message, write_message


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("evit-deploy")
    except metadata.PackageNotFoundError:
        return "unknown"


# ----------------------------------------------------------------------------- ops


def op_hello(args: argparse.Namespace) -> tuple[dict[str, Any], bytes]:
    import platform

    from evit_deploy.machine import device_state, system_info

    reply: dict[str, Any] = {"protocol": PROTOCOL, "evit": _version(), "python": platform.python_version(),
                             "hostname": platform.node(), "state": device_state()}
    if args.full:
        reply["system"] = system_info()
        reply["targets"] = _runtimes(None, args.runtime_device)
    elif args.target:
        reply["targets"] = _runtimes([args.target], args.runtime_device)
    if args.probe:
        reply["probe"] = probe(Path(args.probe).expanduser(), json.loads(args.expect or "{}"))
    return reply, b""


def _runtimes(names: list[str] | None, device: str) -> dict[str, str | None]:
    """target -> None when its artifacts can run here, else the reason (as the target says it)."""
    from evit_deploy.targets.base import all_targets, get_target

    chosen = names or list(all_targets())
    found: dict[str, str | None] = {}
    for name in chosen:
        try:
            found[name] = get_target(name).runtime_available(device)
        except EvitError as err:
            found[name] = str(err)
        except Exception as err:  # noqa: BLE001 - a runtime whose import breaks is a missing runtime here
            found[name] = f"{type(err).__name__}: {err}"
    return found


def probe(directory: Path, expect: dict[str, Any]) -> dict[str, Any]:
    """Is the artifact already here, byte for byte? And is its manifest the current one?"""
    from evit_deploy.manifest import confined, sha256_path

    missing = []
    for name, digest, size in expect.get("files", []):
        path = confined(directory, name, "the probe")
        if not path.exists() or (path.is_file() and path.stat().st_size != size) or sha256_path(path) != digest:
            missing.append(name)
    manifest = directory / expect.get("manifest", "")
    manifest_ok = manifest.is_file() and _manifest_digest(manifest) == expect.get("manifest_digest")
    return {"dir": str(directory), "missing": missing, "manifest_ok": manifest_ok}


def _manifest_digest(path: Path) -> str | None:
    from evit_deploy.remote.store import manifest_digest

    try:
        return manifest_digest(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def op_receive(args: argparse.Namespace, stdin: IO[bytes]) -> tuple[dict[str, Any], bytes]:
    """Unpack the tar on stdin beside DIR, check every hash, then move it into place."""
    from evit_deploy.manifest import load_manifest

    dest = Path(args.dir).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=dest.parent))
    staging.chmod(0o755)
    try:
        names = _safe_extract(stdin, staging)
        manifests = [n for n in names if n.endswith(".evit.json")]
        if len(manifests) != 1:
            raise UsageError("the upload carried no manifest")
        manifest = json.loads((staging / manifests[0]).read_text())
        primary = manifest["files"][0]["path"]
        if (staging / primary).exists():
            load_manifest(staging / primary)  # every hash, or a one-line refusal
        received = sum(_size(staging / n) for n in names if "/" not in n)
        if not dest.exists():
            try:
                os.rename(staging, dest)
                return {"dir": str(dest), "bytes": received}, b""
            except OSError:
                pass  # a concurrent upload of the same artifact got there first: merge below
        for name in sorted(os.listdir(staging), key=lambda n: n.endswith(".evit.json")):  # manifest last
            target = dest / name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(staging / name, target)
        load_manifest(dest / primary)
        return {"dir": str(dest), "bytes": received}, b""
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _safe_extract(stream: IO[bytes], dest: Path) -> list[str]:
    """Regular files and folders only, every path inside ``dest`` (no links, no '..', no absolute)."""
    names = []
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            if member.name.startswith("/") or ".." in parts or not parts:
                raise UsageError(f"refusing an upload entry outside the artifact folder: {member.name!r}")
            target = dest.joinpath(*parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                with target.open("wb") as handle:
                    shutil.copyfileobj(source, handle, 1 << 20)
            else:
                raise UsageError(f"refusing an upload entry that is not a file: {member.name!r}")
            if len(parts) == 1:
                names.append(parts[0])
    return names


def op_fetch(args: argparse.Namespace) -> tuple[dict[str, Any], bytes]:
    """A tar of the named files of DIR (for artifacts made on the device)."""
    base = Path(args.dir).expanduser()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in args.names:
            path = base / name
            if not path.exists():
                raise UsageError(f"{path}: not found on the device")
            tar.add(str(path), arcname=name)
    if args.remove:
        shutil.rmtree(base, ignore_errors=True)
    return {"files": args.names}, buffer.getvalue()


def op_profile(args: argparse.Namespace) -> tuple[dict[str, Any], bytes]:
    """``evit profile`` here, from the host's request (the same object a local profile takes)."""
    from evit_deploy.machine import device_state
    from evit_deploy.pipeline.profile import profile_here
    from evit_deploy.requests import ProfileRequest

    try:
        request = ProfileRequest.model_validate_json(args.request)
    except ValueError as err:
        raise UsageError(f"the host's profile request is not one this evit understands: "
                         f"{str(err).splitlines()[0]}") from None
    result = _loading(lambda: profile_here(request, on_iteration=_progress_reporter()))
    data = result.to_dict()
    data["host"].setdefault("state", device_state())
    return {"result": data}, b""


def op_serve(args: argparse.Namespace, stdin: IO[bytes], out: IO[bytes]) -> int:
    """Load once, then run every request until 'close' or the end of stdin."""
    from evit_deploy.artifact import open_artifact
    from evit_deploy.machine import device_state
    from evit_deploy.remote.protocol import pack_arrays, unpack_arrays

    handle = open_artifact(args.artifact)

    def load() -> Any:
        runner = handle.runner(device=args.device, threads=args.threads)
        return runner.__enter__()

    runner = _loading(load)
    try:
        write_message(out, {"ok": True, "inputs": [i.to_dict() for i in runner.inputs],
                            "outputs": [o.to_dict() for o in runner.outputs], "runner": runner.describe(),
                            "state": device_state()})
        while True:
            try:
                header, payload = read_message(stdin)
            except ProtocolError:
                return 0
            op = header.get("op")
            if op == "close":
                return 0
            try:
                arrays = unpack_arrays(payload)
                if op == "run":
                    outputs = runner.run(arrays)
                elif op == "infer":
                    outputs = runner.infer(arrays)
                else:
                    raise UsageError(f"unknown request {op!r}")
                write_message(out, {"ok": True}, pack_arrays(outputs))
            except EvitError as err:
                write_message(out, _error_header(err))
    finally:
        runner.close()


def op_build_trt(args: argparse.Namespace) -> tuple[dict[str, Any], bytes]:
    from evit_deploy.remote.trt_build import build_on_device

    tick = _progress_reporter()
    return build_on_device(args.artifact, args.out, json.loads(args.options or "{}"), progress=tick), b""


# ----------------------------------------------------------------------------- plumbing


def _loading(load: Callable[[], Any]) -> Any:
    """A runtime that is installed but cannot load (a missing .so, a wrong CUDA) is a missing runtime."""
    try:
        return load()
    except ImportError as err:
        raise RuntimeMissing(f"the runtime failed to import: {err}") from None
    except OSError as err:
        if "cannot open shared object" in str(err) or "Library not loaded" in str(err):
            raise RuntimeMissing(f"the runtime failed to load: {err}") from None
        raise


def _progress_reporter() -> Callable[[int, int], None]:
    last = [0.0]

    def tick(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] > 0.2:
            last[0] = now
            print(progress_line(done, total), file=sys.stderr, flush=True)

    return tick


def _error_header(err: EvitError) -> dict[str, Any]:
    kind = "runtime_missing" if isinstance(err, RuntimeMissing) else type(err).__name__
    return {"ok": False, "error": str(err), "exit_code": err.exit_code, "kind": kind}


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="evit _worker", description="evit's device-side worker (internal).")
    ops = root.add_subparsers(dest="op", required=True)
    hello = ops.add_parser("hello")
    hello.add_argument("--full", action="store_true")
    hello.add_argument("--target")
    hello.add_argument("--runtime-device", default="cpu")
    hello.add_argument("--probe")
    hello.add_argument("--expect")
    receive = ops.add_parser("receive")
    receive.add_argument("dir")
    fetch = ops.add_parser("fetch")
    fetch.add_argument("dir")
    fetch.add_argument("names", nargs="+")
    fetch.add_argument("--remove", action="store_true", help="delete DIR once its files are packed")
    profile = ops.add_parser("profile")
    profile.add_argument("--request", required=True, help="a ProfileRequest as JSON")
    serve = ops.add_parser("serve")
    serve.add_argument("artifact")
    serve.add_argument("--device", default="cpu")
    serve.add_argument("--threads", type=int)
    build = ops.add_parser("build-trt")
    build.add_argument("artifact")
    build.add_argument("--out", required=True)
    build.add_argument("--options")
    return root


def _hang_up(signum: int, frame: Any) -> None:
    """The host went away (ssh dropped, Ctrl-C there): unwind so ``finally`` restores clocks."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run one operation; the reply goes to the real stdout, everything else to stderr."""
    for name in ("SIGHUP", "SIGTERM"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _hang_up)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a runtime that prints must not corrupt the message stream
    sys.stdout = sys.stderr
    stdin = sys.stdin.buffer
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:
        write_message(out, {"ok": False, "error": f"evit {_version()} on the device does not understand this "
                            "request (another version?)", "exit_code": 2, "kind": "version"})
        return int(exc.code or 2)
    try:
        if args.op == "serve":
            return op_serve(args, stdin, out)
        handlers: dict[str, Callable[[], tuple[dict[str, Any], bytes]]] = {
            "hello": lambda: op_hello(args),
            "receive": lambda: op_receive(args, stdin),
            "fetch": lambda: op_fetch(args),
            "profile": lambda: op_profile(args),
            "build-trt": lambda: op_build_trt(args),
        }
        header, payload = handlers[args.op]()
        write_message(out, {"ok": True, **header}, payload)
        return 0
    except EvitError as err:
        write_message(out, _error_header(err))
        return err.exit_code
    except Exception as err:  # noqa: BLE001 - a bug: say so in one line, keep the traceback on stderr
        traceback.print_exc()
        write_message(out, {"ok": False, "error": f"internal error on the device: {type(err).__name__}: {err}",
                            "exit_code": 2, "kind": "internal"})
        return 2
    finally:
        try:
            out.flush()
        except OSError:
            pass  # the host is gone; nobody is listening


if __name__ == "__main__":
    sys.exit(main())
