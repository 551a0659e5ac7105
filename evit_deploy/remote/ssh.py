"""The transport: the system OpenSSH client, run the way an engineer runs it.

Batch mode (never a password prompt), host-key checking left as the user's
configuration has it (an unknown or changed key is an error, never accepted), a
connect timeout and a timeout on every command. The user's ``~/.ssh/config``, agent
and keys apply, so a host alias or ProxyJump that works for ``ssh`` works for evit.

The remote command is a list of words, each quoted with ``shlex.quote`` before it
reaches the device's shell, so a name or path with spaces, ``;`` or ``$(...)`` is one
argument there and runs nothing. Data (artifact files, input and output arrays) travels
through the session's stdin/stdout, never through a command line.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from evit_deploy.devices import Device
from evit_deploy.errors import EvitError, RuntimeMissing, UsageError
from evit_deploy.remote.protocol import ProtocolError, parse_progress, read_message, write_message

SSH_ERROR = 255  # ssh's own exit status when the connection (not the command) failed
CHUNK = 1 << 20


class DeviceError(UsageError):
    """Something about reaching or using a device: exit 2, one line naming the device."""


@dataclass
class Reply:
    header: dict[str, Any]
    payload: bytes
    stderr: list[str] = field(default_factory=list)


def worker_command(device: Device) -> list[str]:
    """The words that start evit's worker on the device (before quoting)."""
    env = [f"{k}={v}" for k, v in device.env.items()]
    prefix = ["env", *env] if env else []
    if device.python is not None:
        return [*prefix, *shlex.split(device.python), "-m", "evit_deploy.remote.worker"]
    return [*prefix, *shlex.split(device.evit or "evit"), "_worker"]


def quote_command(words: list[str]) -> str:
    """One string for the remote shell in which every word stays one argument."""
    return " ".join(shlex.quote(w) for w in words)


class SshTransport:
    """Runs evit's worker on one device and exchanges protocol messages with it."""

    def __init__(self, device: Device, *, ssh: str = "ssh") -> None:
        self.device = device
        self.ssh = ssh

    # -- command lines -------------------------------------------------------------------
    def ssh_argv(self) -> list[str]:
        d = self.device
        argv = [self.ssh, "-T", "-e", "none", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={d.connect_timeout}",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
        if d.ssh_config:
            argv += ["-F", str(Path(d.ssh_config).expanduser())]
        if d.port:
            argv += ["-p", str(d.port)]
        if d.user:
            argv += ["-l", d.user]
        if d.identity_file:
            key = Path(d.identity_file).expanduser()
            if not key.is_file():
                raise DeviceError(f"device {d.name}: identity_file {key} not found; fix the path in the inventory")
            argv += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
        for key, value in d.ssh_options.items():
            argv += ["-o", f"{key}={value}"]
        return [*argv, "--", d.host]

    def argv(self, args: list[str]) -> list[str]:
        """The full local argv: ssh, its options, the host, and the quoted worker command."""
        return [*self.ssh_argv(), quote_command([*worker_command(self.device), *args])]

    def _spawn(self, args: list[str], with_stdin: bool) -> subprocess.Popen[bytes]:
        try:
            return subprocess.Popen(self.argv(args), stdin=subprocess.PIPE if with_stdin else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise DeviceError(f"the OpenSSH client ({self.ssh}) is not installed here; install openssh-client") from None

    # -- one request, one reply --------------------------------------------------------
    def call(self, args: list[str], *, timeout: float, what: str, payload: bytes | Path | None = None,
             on_progress: Callable[[int, int], None] | None = None,
             on_sent: Callable[[int], None] | None = None) -> Reply:
        """Run the worker with ``args``; send ``payload`` on its stdin; return its one reply."""
        proc = self._spawn(args, with_stdin=payload is not None)
        stderr = _StderrDrain(proc.stderr, on_progress)
        writer = None
        if payload is not None:
            writer = threading.Thread(target=_feed, args=(proc.stdin, payload, on_sent), daemon=True)
            writer.start()
        watchdog = _Watchdog(proc, timeout)
        try:
            assert proc.stdout is not None
            try:
                header, data = read_message(proc.stdout)
                noise: list[str] = []
            except ProtocolError as err:
                header, data, noise = None, b"", err.noise
            proc.stdout.read()
            rc = proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stderr.join()
        if writer is not None:
            writer.join(timeout=5)
        if watchdog.fired:
            raise self.timeout_error(what, timeout)
        if header is None:
            raise self.classify(rc, stderr.lines, noise, what)
        self._raise_worker_error(header)
        return Reply(header, data, stderr.lines)

    # -- a long-lived session (a runner that stays loaded) ----------------------------
    def open_channel(self, args: list[str], *, timeout: float, what: str) -> Channel:
        return Channel(self, self._spawn(args, with_stdin=True), timeout, what)

    # -- errors -----------------------------------------------------------------------
    def timeout_error(self, what: str, timeout: float) -> DeviceError:
        return DeviceError(f"device {self.device.name}: no answer within {timeout:g} s while {what}; "
                           "raise command_timeout in the inventory if it needs longer")

    def _raise_worker_error(self, header: dict[str, Any]) -> None:
        if header.get("ok", True):
            return
        name = self.device.name
        message = _one_line(str(header.get("error", "failed")))
        for runtime in ("cpu", "cuda"):  # the device's advice about --device means NAME:RUNTIME from here
            message = message.replace(f"--device {runtime}", f"--device {name}:{runtime}")
        code = int(header.get("exit_code", 2))
        kind = header.get("kind")
        text = f"device {name}: {message}"
        if kind == "runtime_missing":
            raise RuntimeMissing(text)
        raise EvitError(text, exit_code=code)

    def classify(self, rc: int, stderr: list[str], noise: list[str], what: str) -> DeviceError:
        """ssh's exit status and messages -> one line saying what is wrong and what to do."""
        d = self.device
        text = "\n".join(stderr)
        last = _last_line(stderr) or _last_line(noise) or f"exit status {rc}"
        if rc == SSH_ERROR:
            if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text or "HOST KEY HAS CHANGED" in text.upper():
                return DeviceError(
                    f"device {d.name}: the host key of {d.host} has CHANGED since it was recorded in known_hosts; "
                    f"if the device was reinstalled, verify the new key and replace the old one "
                    f"(ssh-keygen -R {_known_hosts_name(d)}), otherwise the connection may be intercepted")
            if "host key is known" in text or "Host key verification failed" in text:
                return DeviceError(
                    f"device {d.name}: the host key of {d.host} is not in known_hosts; connect once with "
                    f"`ssh {_ssh_hint(d)}` and check its fingerprint (evit never accepts unknown host keys)")
            if "Permission denied" in text or "Too many authentication failures" in text:
                method = re.search(r"Permission denied \(([^)]*)\)", text)
                detail = f"the server refused {method.group(1)}" if method else "the server refused the login"
                return DeviceError(
                    f"device {d.name}: authentication failed for {d.address} ({detail}); check user and "
                    f"identity_file in the inventory, or install your key there with ssh-copy-id")
            for pattern, reason in _UNREACHABLE:
                if re.search(pattern, text, re.IGNORECASE):
                    return DeviceError(f"device {d.name} ({d.address}) is unreachable: {reason}; check that it is "
                                       "on the network and its sshd is running")
            return DeviceError(f"device {d.name}: ssh to {d.address} failed: {last}")
        command = quote_command(worker_command(d))
        if rc == 127:
            return DeviceError(
                f"device {d.name}: evit is not installed there ({_evit_word(d)}: {last}); install evit-deploy "
                f"{_local_version()} on the device, or set `evit:` or `python:` for it in the inventory")
        if re.search(r"No module named '?evit_deploy'?$", text, re.MULTILINE):
            return DeviceError(
                f"device {d.name}: evit-deploy is not installed in {_evit_word(d)} there; pip install "
                f"'evit-deploy=={_local_version()}' on the device")
        if "No such command '_worker'" in text or re.search(r"No module named '?evit_deploy\.remote", text):
            return DeviceError(
                f"device {d.name}: evit there is another version, without the device worker; install evit-deploy "
                f"{_local_version()} on the device")
        if rc == 126:
            return DeviceError(f"device {d.name}: {_evit_word(d)} is not executable there ({last})")
        return DeviceError(f"device {d.name}: `{command}` failed while {what} (exit {rc}): {last}")


class Channel:
    """A worker that stays up (a loaded runner): request, reply, request, ..., close."""

    def __init__(self, transport: SshTransport, proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
        self.transport, self.proc, self.timeout, self.what = transport, proc, timeout, what
        self.stderr = _StderrDrain(proc.stderr, None)
        self.closed = False

    def receive(self, what: str | None = None) -> tuple[dict[str, Any], bytes]:
        watchdog = _Watchdog(self.proc, self.timeout)
        try:
            assert self.proc.stdout is not None
            header, data = read_message(self.proc.stdout)
        except ProtocolError as err:
            rc = self._finish()
            if watchdog.fired:
                raise self.transport.timeout_error(what or self.what, self.timeout) from None
            raise self.transport.classify(rc, self.stderr.lines, err.noise, what or self.what) from None
        finally:
            watchdog.cancel()
        if not header.get("ok", True):
            self._finish()
        self.transport._raise_worker_error(header)
        return header, data

    def request(self, header: dict[str, Any], payload: bytes = b"", what: str | None = None) -> tuple[dict, bytes]:
        try:
            assert self.proc.stdin is not None
            write_message(self.proc.stdin, header, payload)
        except (BrokenPipeError, OSError):
            pass  # the worker died: receive() reports why
        return self.receive(what)

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                write_message(self.proc.stdin, {"op": "close"})
                self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        self._finish(grace=10)

    def _finish(self, grace: float = 2) -> int:
        self.closed = True
        try:
            return self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.stderr.join()


# ----------------------------------------------------------------------------- helpers
_UNREACHABLE = (
    (r"Connection refused", "connection refused (nothing listens on that port)"),
    (r"Connection timed out|Operation timed out|timed out", "the connection timed out"),
    (r"No route to host", "no route to host"),
    (r"Network is unreachable", "network unreachable"),
    (r"Could not resolve hostname|Name or service not known|nodename nor servname", "its host name does not resolve"),
    (r"kex_exchange_identification|Connection closed by|Connection reset",
     "the connection was closed during the handshake"),
)


class _Watchdog:
    """Kills the ssh process when a command outlives its timeout."""

    def __init__(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        self.fired = False
        self.proc = proc
        self.timer = threading.Timer(timeout, self._fire)
        self.timer.daemon = True
        self.timer.start()

    def _fire(self) -> None:
        self.fired = True
        if self.proc.poll() is None:
            self.proc.kill()

    def cancel(self) -> None:
        self.timer.cancel()


class _StderrDrain:
    """Reads stderr as it comes (so a chatty runtime never blocks the pipe); routes progress lines."""

    def __init__(self, stream: IO[bytes] | None, on_progress: Callable[[int, int], None] | None) -> None:
        self.lines: list[str] = []
        self.on_progress = on_progress
        self.thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self.thread.start()

    def _run(self, stream: IO[bytes] | None) -> None:
        if stream is None:
            return
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            progress = parse_progress(line)
            if progress is not None:
                if self.on_progress is not None:
                    self.on_progress(*progress)
                continue
            if len(self.lines) < 2000:
                self.lines.append(line)

    def join(self) -> None:
        self.thread.join(timeout=5)


def _feed(stdin: IO[bytes] | None, payload: bytes | Path, on_sent: Callable[[int], None] | None) -> None:
    assert stdin is not None
    sent = 0
    try:
        if isinstance(payload, Path):
            with payload.open("rb") as handle:
                for chunk in iter(lambda: handle.read(CHUNK), b""):
                    stdin.write(chunk)
                    sent += len(chunk)
                    if on_sent:
                        on_sent(sent)
        else:
            stdin.write(payload)
            if on_sent:
                on_sent(len(payload))
        stdin.close()
    except (BrokenPipeError, OSError, ValueError):
        pass  # the other side ended first; the reply (or its absence) says why


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _last_line(lines: list[str]) -> str:
    for line in reversed(lines):
        if line.strip() and not line.startswith("@"):
            return line.strip()
    return ""


def _known_hosts_name(d: Device) -> str:
    return f"'[{d.host}]:{d.port}'" if d.port and d.port != 22 else d.host


def _ssh_hint(d: Device) -> str:
    port = f"-p {d.port} " if d.port else ""
    user = f"{d.user}@" if d.user else ""
    return f"{port}{user}{d.host}"


def _evit_word(d: Device) -> str:
    return d.python if d.python is not None else (d.evit or "evit")


def _local_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("evit-deploy")
    except metadata.PackageNotFoundError:
        return "unknown"
