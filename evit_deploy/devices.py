"""Devices: presets for kinds of hardware, and the user's inventory of real machines.

An inventory (``devices.yaml``) names the machines evit reaches over SSH::

    defaults:                      # optional, merged into every entry
      user: nvidia
      identity_file: ~/.ssh/id_ed25519
    devices:
      orin:
        host: orin.lab             # a hostname, an address, or a Host alias of ~/.ssh/config
        preset: jetson-orin        # default target, precision and runtime options
        evit: /home/nvidia/venv/bin/evit    # or python: /usr/bin/python3
      pi5:
        host: 192.168.1.40
        user: pi
        preset: raspberry-pi

The file is found at ``--inventory PATH``, else ``$EVIT_DEVICES``, else
``~/.config/evit/devices.yaml`` (``$XDG_CONFIG_HOME`` respected). ``--device`` values
``cpu`` and ``cuda`` (``gpu``, ``cuda:N``) always mean this machine; any other name is
looked up here. ``NAME:RUNTIME`` (e.g. ``orin:cpu``) picks the runtime device there.

This module only describes devices; ``evit_deploy.remote`` talks to them.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evit_deploy.errors import UsageError
from evit_deploy.textfile import load_yaml

PresetName = Literal["jetson-orin", "jetson-orin-nano", "gpu-server", "mac", "raspberry-pi", "local"]
LOCAL_DEVICES = ("cpu", "cuda", "gpu")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HOST = re.compile(r"^[A-Za-z0-9_.%:\[\]-]+$")  # names, IPv4, IPv6 (bracketed or not), ssh-config aliases
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SSH_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
# ``ssh_options`` evit passes to ssh as ``-o Key=Value``: options that shape the connection,
# authentication and host-key checking, nothing else (ssh_config(5) keywords, case-insensitive).
SSH_OPTIONS_ALLOWED = frozenset(k.lower() for k in (
    "AddressFamily", "BindAddress", "BindInterface", "CASignatureAlgorithms", "CertificateFile", "CheckHostIP",
    "Ciphers", "Compression", "ConnectionAttempts", "ConnectTimeout", "ControlMaster", "ControlPath",
    "ControlPersist", "FingerprintHash", "GlobalKnownHostsFile", "GSSAPIAuthentication", "HashKnownHosts",
    "HostKeyAlgorithms", "HostKeyAlias", "Hostname", "IdentitiesOnly", "IdentityAgent", "IdentityFile", "IPQoS",
    "KexAlgorithms", "LogLevel", "MACs", "NoHostAuthenticationForLocalhost", "Port", "PreferredAuthentications",
    "ProxyJump", "PubkeyAcceptedAlgorithms", "PubkeyAuthentication", "RekeyLimit", "RequiredRSASize",
    "RevokedHostKeys", "ServerAliveCountMax", "ServerAliveInterval", "StrictHostKeyChecking", "TCPKeepAlive",
    "UpdateHostKeys", "User", "UserKnownHostsFile", "VerifyHostKeyDNS",
))
# Refused by name with the reason: each runs a command or loads code on *this* machine whenever evit
# connects (or, for Match/Include, pulls in directives that can).
SSH_OPTIONS_LOCAL_CODE = {k.lower(): k for k in (
    "ProxyCommand", "LocalCommand", "PermitLocalCommand", "KnownHostsCommand", "Match", "Include",
    "PKCS11Provider", "SecurityKeyProvider", "XAuthLocation",
)}


class Preset(BaseModel):
    """What a kind of device runs by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    kind: Literal["jetson", "gpu", "mac", "pi", "cpu"]
    target: str  # default export target for this kind of device
    precision: str
    runtime_device: str = "cpu"  # what the runner is given as ``device`` there
    threads: int | None = None


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(name="jetson-orin", description="NVIDIA Jetson AGX Orin / Orin NX, JetPack 5-6",
               kind="jetson", target="trt", precision="fp16", runtime_device="cuda"),
        Preset(name="jetson-orin-nano", description="NVIDIA Jetson Orin Nano, JetPack 5-6",
               kind="jetson", target="trt", precision="fp16", runtime_device="cuda"),
        Preset(name="gpu-server", description="Linux server with an NVIDIA GPU (TensorRT, ONNX Runtime CUDA)",
               kind="gpu", target="trt", precision="fp16", runtime_device="cuda"),
        Preset(name="mac", description="Apple-silicon Mac (Core ML: CPU, GPU, Neural Engine)",
               kind="mac", target="coreml", precision="fp16"),
        Preset(name="raspberry-pi", description="Raspberry Pi 4/5 or another ARM board (LiteRT, XNNPACK)",
               kind="pi", target="tflite", precision="fp32", threads=4),
        Preset(name="local", description="A Linux or macOS CPU machine (ONNX Runtime)",
               kind="cpu", target="onnx", precision="fp32"),
    )
}


class Device(BaseModel):
    """One machine of the inventory, validated so nothing in it can reach a shell unquoted."""

    model_config = ConfigDict(extra="forbid")

    name: str
    host: str
    user: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    identity_file: str | None = None
    ssh_config: str | None = None  # passed as ``ssh -F``
    ssh_options: dict[str, str] = Field(default_factory=dict)  # passed as ``-o Key=Value``
    preset: PresetName = "local"
    evit: str | None = None  # the evit command there (split like a shell would, then quoted word by word)
    python: str | None = None  # alternatively: a python with evit-deploy installed
    workdir: str = "~/.cache/evit"  # on the device; artifacts go to WORKDIR/artifacts/<sha256>/
    env: dict[str, str] = Field(default_factory=dict)  # environment for evit there (e.g. LD_LIBRARY_PATH)
    runtime_device: str | None = None  # overrides the preset's
    target: str | None = None  # overrides the preset's default export target
    precision: str | None = None
    threads: int | None = Field(None, ge=1)
    connect_timeout: int = Field(10, ge=1, le=600)  # seconds, ssh ConnectTimeout
    command_timeout: int = Field(1800, ge=1)  # seconds, any one command on the device
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("letters, digits, '.', '_' and '-' only, starting with a letter or digit")
        if value.lower() in LOCAL_DEVICES:
            raise ValueError(f"{value!r} means this machine's own {value}; choose another name")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not _HOST.match(value) or value.startswith("-"):
            raise ValueError("a hostname, address or ssh-config alias (no spaces, not starting with '-')")
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is not None and not _USER.match(value):
            raise ValueError("a login name (letters, digits, '.', '_', '-')")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _ENV_KEY.match(key):
                raise ValueError(f"{key!r} is not an environment variable name")
        return {k: str(v) for k, v in value.items()}

    @field_validator("ssh_options")
    @classmethod
    def _ssh_options(cls, value: dict[str, Any]) -> dict[str, str]:
        """Only options of ``SSH_OPTIONS_ALLOWED``: an inventory is often shared (a team file, a README
        snippet, ``$EVIT_DEVICES`` in CI), and an inline ``ProxyCommand`` would run on this machine at
        every connection. What ssh itself should do beyond that belongs in the ssh configuration."""
        for key, option in value.items():
            if not _SSH_KEY.match(str(key)) or any(not c.isprintable() for c in str(option)):
                raise ValueError(f"{key!r}: an ssh option is a word (e.g. UserKnownHostsFile) with a one-line value")
            if key.lower() in SSH_OPTIONS_LOCAL_CODE:
                raise ValueError(
                    f"{key} runs a command or loads code on this machine whenever evit connects, so evit refuses "
                    "it here; if you need it, put it under a Host alias in ~/.ssh/config (or the file named by "
                    "ssh_config) and use that alias as host")
            if key.lower() not in SSH_OPTIONS_ALLOWED:
                raise ValueError(
                    f"{key} is not an option evit passes to ssh (only connection, authentication and host-key "
                    "options: see SECURITY.md); put it in ~/.ssh/config if ssh needs it for this host")
        return {k: str(v) for k, v in value.items()}

    @model_validator(mode="after")
    def _one_command(self) -> Device:
        if self.evit is not None and self.python is not None:
            raise ValueError("give either evit (the command) or python (an interpreter with evit-deploy), not both")
        return self

    # -- derived -----------------------------------------------------------------------
    @property
    def preset_info(self) -> Preset:
        return PRESETS[self.preset]

    @property
    def address(self) -> str:
        """``user@host:port`` as a person would write it (for messages)."""
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{user}{self.host}{port}"

    @property
    def default_runtime_device(self) -> str:
        return self.runtime_device or self.preset_info.runtime_device

    @property
    def default_target(self) -> str:
        return self.target or self.preset_info.target

    @property
    def default_precision(self) -> str:
        return self.precision or self.preset_info.precision

    @property
    def default_threads(self) -> int | None:
        return self.threads or self.preset_info.threads


class Inventory(BaseModel):
    """The devices of one ``devices.yaml`` and where it came from."""

    devices: dict[str, Device] = Field(default_factory=dict)
    source: str | None = None  # the file, or None when there is none

    def get(self, name: str) -> Device:
        if name in self.devices:
            return self.devices[name]
        known = ", ".join(self.devices) or "none"
        where = f"the inventory {self.source}" if self.source else "no inventory (none found)"
        raise UsageError(
            f"unknown device {name!r}: not a local device ({', '.join(LOCAL_DEVICES)}) and not in {where} "
            f"(devices: {known}); add it to devices.yaml or see `evit devices`"
        )


def default_inventory_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "evit" / "devices.yaml"


def inventory_path(explicit: str | Path | None = None) -> tuple[Path | None, str]:
    """The inventory file to read and how it was chosen (for messages)."""
    if explicit is not None:
        return Path(explicit).expanduser(), "--inventory"
    env = os.environ.get("EVIT_DEVICES")
    if env:
        return Path(env).expanduser(), "$EVIT_DEVICES"
    path = default_inventory_path()
    return (path if path.is_file() else None), "default"


def load_inventory(explicit: str | Path | None = None) -> Inventory:
    """Read and validate the inventory; an explicitly named file must exist."""
    path, how = inventory_path(explicit)
    if path is None:
        return Inventory()
    if not path.is_file():
        raise UsageError(f"{path}: inventory not found (from {how}); create it or point {how} at devices.yaml")
    return parse_inventory(load_yaml(path, "inventory") or {}, str(path))


def parse_inventory(data: Any, source: str = "<inventory>") -> Inventory:
    if not isinstance(data, dict) or set(data) - {"devices", "defaults"}:
        raise UsageError(f"{source}: expected top-level keys 'devices' (and optionally 'defaults')")
    defaults = data.get("defaults") or {}
    raw = data.get("devices") or {}
    if not isinstance(defaults, dict):
        raise UsageError(f"{source}: 'defaults' must be a mapping of device fields")
    if isinstance(raw, list):
        entries = [(str(e.get("name")) if isinstance(e, dict) else "?", e) for e in raw]
    elif isinstance(raw, dict):
        entries = [(str(name), {**(e or {}), "name": name} if isinstance(e, dict) or e is None else e)
                   for name, e in raw.items()]
    else:
        raise UsageError(f"{source}: 'devices' must map names to entries")
    devices: dict[str, Device] = {}
    for name, entry in entries:
        if not isinstance(entry, dict):
            raise UsageError(f"{source}: device {name!r} must be a mapping of fields (host, user, preset, ...)")
        merged = {**defaults, **entry}
        for mine, other in (("python", "evit"), ("evit", "python")):  # an entry's command replaces the default's
            if entry.get(mine) is not None and other not in entry:
                merged.pop(other, None)
        try:
            device = Device.model_validate(merged)
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "entry"
            message = first["msg"].removeprefix("Value error, ")
            raise UsageError(f"{source}: device {name!r}: {field}: {message}") from None
        if device.name in devices:
            raise UsageError(f"{source}: device {device.name!r} is defined twice")
        devices[device.name] = device
    return Inventory(devices=devices, source=source)


def is_local(device: str) -> bool:
    """``cpu``, ``cuda``, ``gpu``, ``cuda:0``: this machine. Anything else names an inventory entry."""
    return device.lower().split(":", 1)[0] in LOCAL_DEVICES


def parse_device_list(value: str) -> list[str]:
    """``a,b , c`` -> ["a", "b", "c"]; empty items refused."""
    names = [v.strip() for v in value.split(",")]
    if not all(names):
        raise UsageError(f"--device {value!r}: an empty name in the list; write NAME[,NAME...]")
    return names


def resolve(spec: str, inventory: Inventory | None = None) -> tuple[Device, str]:
    """``orin`` or ``orin:cpu`` -> (the inventory entry, the runtime device to use there)."""
    name, _, runtime = spec.partition(":")
    device = (inventory or load_inventory()).get(name)
    return device, runtime or device.default_runtime_device


__all__ = ["PRESETS", "Device", "Inventory", "Preset", "default_inventory_path", "inventory_path", "is_local",
           "load_inventory", "parse_device_list", "parse_inventory", "resolve"]
