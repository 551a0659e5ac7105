"""Property: evit either accepts an input or refuses it with one ``UsageError`` line, nothing else.

Boundaries: ``--resolution`` strings (``parse_resolution``), recipe YAML (``load_recipe``, and
``evit export --config`` for refused ones), ``devices.yaml`` (``parse_inventory``; whatever it
accepts cannot smuggle ssh options or shell syntax). No example may raise another exception,
print a traceback, or leave a folder behind.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from evit_deploy.configs import Recipe, load_recipe, parse_resolution
from evit_deploy.devices import SSH_OPTIONS_ALLOWED, Device, parse_inventory
from evit_deploy.errors import UsageError

from .strategies import DEEP_CLI, FAST_CLI, deep, fast, mappings, nested, resolution_text, scratch

pytestmark = pytest.mark.filterwarnings("ignore")


def one_line(err: UsageError) -> str:
    message = str(err)
    assert message and "\n" not in message and "Traceback" not in message, message
    return message


# ----------------------------------------------------------------------------- --resolution


def check_resolution(text: str) -> None:
    try:
        h, w = parse_resolution(text)
    except UsageError as err:
        one_line(err)
        return
    assert h > 0 and w > 0 and h % 32 == 0 and w % 32 == 0, (text, h, w)


@fast()
@given(resolution_text)
@example("512x1024")
@example("0x0")
@example("100000x100000")
def test_resolution_strings(text):
    check_resolution(text)


@pytest.mark.slow
@deep()
@given(resolution_text)
def test_resolution_strings_deep(text):
    check_resolution(text)


# ----------------------------------------------------------------------------- recipes

RECIPE_FIELDS = list(Recipe.model_fields)
RECIPE_NESTED = ["source", "samples", "max_rel", "atol", "cosine", "opset", "trt_version", "layout", "simplify",
                 "format", "limit", "classes", "max_drop", "min_agreement"]


def recipe_documents() -> st.SearchStrategy[str]:
    """Recipe files: YAML of random mappings (mostly known fields, nested known fields), random
    scalars and lists, and random text."""
    fields = mappings(RECIPE_FIELDS + RECIPE_NESTED)
    documents = st.one_of(fields, fields.map(lambda d: {**d, "options": d}), nested(), st.lists(nested()))
    return st.one_of(documents.map(lambda d: yaml.safe_dump(d, allow_unicode=True)), st.text(max_size=80))


def check_recipe(tmp: Path, text: str) -> bool:
    path = tmp / "recipe.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_recipe(path)
    except UsageError as err:
        one_line(err)
        return False
    return True


@fast(300)
@given(recipe_documents())
@example("target: [1, 2]\nresolution: [64, 64]\n")
@example("calibration: {source: 3}\n")
@example("options: 5\n")
def test_recipe_files(tmp_path_factory, text):
    with scratch(tmp_path_factory, "recipe") as folder:
        check_recipe(folder, text)


@pytest.mark.slow
@deep()
@given(recipe_documents())
def test_recipe_files_deep(tmp_path_factory, text):
    with scratch(tmp_path_factory, "recipe") as folder:
        check_recipe(folder, text)


def check_export_refuses(cli, tmp: Path, text: str) -> None:
    """A refused recipe through ``evit export --config``: exit 2, one line, no traceback, no --out."""
    if check_recipe(tmp, text):
        return  # accepted recipes export a model: too slow for a property; load_recipe covered them
    out = tmp / "out"
    result = cli("export", "efficientvit-b0-r224", "--config", tmp / "recipe.yaml", "--out", out)
    assert result.code == 2 and len(result.error_lines) == 1, result
    assert not out.exists(), f"{out} left behind by a refused recipe"


@fast(FAST_CLI)
@given(recipe_documents())
def test_refused_recipes_through_the_cli(cli, tmp_path_factory, text):
    with scratch(tmp_path_factory, "cli") as folder:
        check_export_refuses(cli, folder, text)


@pytest.mark.slow
@deep(DEEP_CLI)
@given(recipe_documents())
def test_refused_recipes_through_the_cli_deep(cli, tmp_path_factory, text):
    with scratch(tmp_path_factory, "cli") as folder:
        check_export_refuses(cli, folder, text)


# ----------------------------------------------------------------------------- devices.yaml

DEVICE_FIELDS = list(Device.model_fields)
SHELL = re.compile(r"[\s;&|`$<>()\\'\"]")


def inventories() -> st.SearchStrategy[object]:
    entry = st.one_of(mappings(DEVICE_FIELDS, 8), mappings(DEVICE_FIELDS, 8).map(lambda d: {"host": "h", **d}),
                      st.dictionaries(st.sampled_from(["ProxyCommand", "UserKnownHostsFile", "LocalCommand", "Port",
                                                       "proxyjump", "Match", "x y", ""]), nested(), max_size=3)
                      .map(lambda o: {"host": "h", "ssh_options": o}))
    devices = st.one_of(st.dictionaries(st.text(max_size=8), entry, max_size=3), st.lists(entry, max_size=3), nested())
    return st.one_of(st.fixed_dictionaries({"devices": devices}),
                     st.fixed_dictionaries({"devices": devices, "defaults": st.one_of(entry, nested())}), nested())


def check_inventory(data: object) -> None:
    try:
        inventory = parse_inventory(data, "devices.yaml")
    except UsageError as err:
        assert one_line(err).startswith("devices.yaml: ")
        return
    from evit_deploy.remote.ssh import SshTransport

    for device in inventory.devices.values():  # what was accepted cannot inject options or shell syntax
        assert not device.host.startswith("-") and not SHELL.search(device.host), device.host
        assert device.user is None or not SHELL.search(device.user), device.user
        assert all(key.lower() in SSH_OPTIONS_ALLOWED for key in device.ssh_options), device.ssh_options
        try:
            argv = SshTransport(device).ssh_argv()
        except UsageError as err:  # e.g. an identity_file that does not exist
            one_line(err)
            continue
        assert argv[-2:] == ["--", device.host]


@fast(300)
@given(inventories())
@example({"devices": {"x": {"host": "h", "ssh_options": {"ProxyCommand": "touch pwned"}}}})
@example({"devices": {"x": {"host": "-oProxyCommand=id"}}})
@example({"devices": [{"host": "h"}]})
def test_inventories(data):
    check_inventory(data)


@pytest.mark.slow
@deep()
@given(inventories())
def test_inventories_deep(data):
    check_inventory(data)
