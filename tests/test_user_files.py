"""Issue 14 item 6: recipes and inventories that are not UTF-8 text are one line, exit 2."""
from __future__ import annotations

import pytest

from evit_deploy.configs import load_recipe
from evit_deploy.devices import load_inventory
from evit_deploy.errors import UsageError

NOT_UTF8 = {
    "latin-1": "target: onnx\ndescription: caf\u00e9\n".encode("latin-1"),
    "utf-16": "target: onnx\n".encode("utf-16"),
    "binary": bytes(range(256)),
}


@pytest.mark.parametrize("kind", list(NOT_UTF8))
def test_a_recipe_that_is_not_utf8_is_one_line(tmp_path, cli, kind):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(NOT_UTF8[kind])
    result = cli("export", "efficientvit-b0-r224", "--config", recipe, "--out", tmp_path / "out")
    assert result.code == 2, result
    (line,) = result.error_lines
    assert line.startswith(f"error: {recipe}: the recipe is not UTF-8 text (byte 0x") and "save it as UTF-8" in line
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_a_byte_order_mark_is_fine(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes("target: onnx\nprecision: fp16\n".encode("utf-8-sig"))
    assert load_recipe(recipe).precision == "fp16"


@pytest.mark.parametrize("kind", list(NOT_UTF8))
def test_an_inventory_that_is_not_utf8_is_one_line(tmp_path, kind):
    path = tmp_path / "devices.yaml"
    path.write_bytes(NOT_UTF8[kind])
    with pytest.raises(UsageError, match=r"the inventory is not UTF-8 text \(byte 0x"):
        load_inventory(path)


@pytest.mark.parametrize("what", ["recipe", "inventory"])
def test_deeply_nested_yaml_is_one_line(tmp_path, what):
    path = tmp_path / "deep.yaml"
    path.write_text("[" * 20000 + "]" * 20000)
    with pytest.raises(UsageError, match=f"the {what} nests too deeply|the {what} is not valid YAML"):
        load_recipe(path) if what == "recipe" else load_inventory(path)


def test_an_unreadable_recipe_is_one_line(tmp_path):
    import os

    recipe = tmp_path / "r.yaml"
    recipe.write_text("target: onnx\n")
    recipe.chmod(0)
    if os.access(recipe, os.R_OK):
        pytest.skip("running as a user who reads any file (root)")
    with pytest.raises(UsageError, match="cannot read the recipe"):
        load_recipe(recipe)
