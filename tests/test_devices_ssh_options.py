"""Issue 14 item 3: ``ssh_options`` that run local commands or load code are refused, by name.

evit passes only connection, authentication and host-key options (``SSH_OPTIONS_ALLOWED``) from
devices.yaml to ``ssh -o``; ProxyCommand and its kind belong in the ssh configuration.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from evit_deploy.devices import SSH_OPTIONS_LOCAL_CODE, parse_inventory
from evit_deploy.errors import UsageError

LOCAL_CODE = ["ProxyCommand", "LocalCommand", "PermitLocalCommand", "KnownHostsCommand", "Match", "Include",
              "PKCS11Provider", "SecurityKeyProvider", "XAuthLocation"]


def inventory(options: dict, where: str = "entry") -> dict:
    entry = {"host": "127.0.0.1"}
    if where == "entry":
        return {"devices": {"x": {**entry, "ssh_options": options}}}
    return {"defaults": {"ssh_options": options}, "devices": {"x": entry}}


@pytest.mark.parametrize("key", LOCAL_CODE + ["proxycommand", "PROXYCOMMAND"])
@pytest.mark.parametrize("where", ["entry", "defaults"])
def test_options_that_run_local_code_are_refused_by_name(key, where):
    with pytest.raises(UsageError) as err:
        parse_inventory(inventory({key: "touch pwned"}, where), "devices.yaml")
    message = str(err.value)
    assert message.startswith(f"devices.yaml: device 'x': ssh_options: {key} runs a command or loads code"), message
    assert "~/.ssh/config" in message and "\n" not in message and "Value error" not in message


def test_every_refused_name_is_listed():
    assert set(SSH_OPTIONS_LOCAL_CODE) == {k.lower() for k in LOCAL_CODE}


@pytest.mark.parametrize("key", ["RemoteCommand", "RequestTTY", "ForwardAgent", "LocalForward", "SessionType",
                                 "StdinNull", "SetEnv", "EscapeChar"])
def test_options_outside_the_allow_list_are_refused(key):
    with pytest.raises(UsageError, match=f"ssh_options: {key} is not an option evit passes to ssh"):
        parse_inventory(inventory({key: "yes"}), "devices.yaml")


def test_connection_options_pass_to_ssh():
    from evit_deploy.remote.ssh import SshTransport

    options = {"UserKnownHostsFile": "/k", "ProxyJump": "me@jump:2222", "StrictHostKeyChecking": "yes",
               "controlpath": "~/.ssh/cm-%r@%h:%p", "HostKeyAlias": "orin"}
    device = parse_inventory(inventory(options), "devices.yaml").get("x")
    argv = SshTransport(device).ssh_argv()
    assert all(f"{k}={v}" in argv for k, v in options.items())


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_devices_check_never_runs_a_proxy_command(tmp_path, cli):
    """The issue's reproduction: before the fix ssh ran the ProxyCommand and the file appeared."""
    planted = tmp_path / "pwned"
    path = tmp_path / "devices.yaml"
    path.write_text(yaml.safe_dump(inventory({"ProxyCommand": f"touch {planted}; false"})))
    result = cli("devices", "check", "x", "--inventory", path)
    assert result.code == 2, result
    (line,) = result.error_lines
    assert "ProxyCommand runs a command or loads code on this machine" in line
    assert not planted.exists() and not Path("pwned").exists()
