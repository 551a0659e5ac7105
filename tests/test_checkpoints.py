"""Checkpoint loading: formats, wrappers, layouts, and one clear line for every bad input."""
from __future__ import annotations

import ast
import hashlib
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from evit_deploy.checkpoints import (
    detect_layout,
    load_state_dict,
    official_to_timm,
    timm_to_official,
)
from evit_deploy.errors import UsageError
from evit_deploy.zoo import create_model

VARIANTS = ["b0", "b1", "b2", "b3", "l1", "l2", "l3"]


class NotWeights:
    """A custom object: weights_only unpickling must refuse it."""

    def __init__(self) -> None:
        self.payload = torch.zeros(2)


class Trap:
    """Unpickling this creates a folder: proof that a refused file ran no code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def read_keys(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    pairs = []
    for line in path.read_text().splitlines():
        if line.strip():
            name, shape = line.split("\t")
            pairs.append((name, tuple(ast.literal_eval(shape))))
    return pairs


@pytest.fixture(scope="module")
def seeded(reference_dir: Path, seeded_weights):
    """builder -> trained-looking official state dict (torch tensors), cached per module."""
    cache: dict[str, dict[str, torch.Tensor]] = {}

    def get(builder: str, seed: int = 7) -> dict[str, torch.Tensor]:
        if builder not in cache:
            arrays = seeded_weights.state_dict(reference_dir / "state_dict_keys" / f"{builder}.txt", seed)
            cache[builder] = {k: torch.from_numpy(v) for k, v in arrays.items()}
        return dict(cache[builder])

    return get


def run(model: torch.nn.Module, size: int = 96) -> torch.Tensor:
    x = torch.linspace(-2, 2, 3 * size * size).reshape(1, 3, size, size)
    with torch.no_grad():
        return model(x)


@pytest.fixture(scope="module")
def b1_reference(seeded) -> torch.Tensor:
    return run(create_model("efficientvit-b1-r224", seeded("efficientvit_cls_b1")))


# --- formats and wrappers -----------------------------------------------------------------------

def test_official_pt_and_state_dict_input_agree(seeded, b1_reference: torch.Tensor, tmp_path: Path) -> None:
    sd = seeded("efficientvit_cls_b1")
    torch.save(sd, tmp_path / "b1.pth")
    model = create_model("efficientvit-b1-r224", tmp_path / "b1.pth")
    assert not model.training
    assert torch.equal(run(model), b1_reference)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


@pytest.mark.parametrize("wrap", [
    lambda sd: {"state_dict": sd, "epoch": 3, "best_val": 79.4},  # official trainer
    lambda sd: {"model": sd, "optimizer": {"lr": 0.1}},
    lambda sd: {"state_dict_ema": sd, "epoch": 1},
    lambda sd: {f"module.{k}": v for k, v in sd.items()},  # DataParallel / DDP
    lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},  # torch.compile
], ids=["state_dict", "model", "state_dict_ema", "module-prefix", "wrapped-module-prefix", "compiled"])
def test_wrappers_and_prefixes(wrap, seeded, b1_reference: torch.Tensor, tmp_path: Path) -> None:
    torch.save(wrap(seeded("efficientvit_cls_b1")), tmp_path / "ckpt.pt")
    assert torch.equal(run(create_model("efficientvit-b1-r224", tmp_path / "ckpt.pt")), b1_reference)


def test_state_dict_is_preferred_to_ema(seeded) -> None:
    sd = seeded("efficientvit_cls_b1")
    other = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    model = create_model("efficientvit-b1-r224", {"state_dict": sd, "state_dict_ema": other})
    assert torch.equal(model.state_dict()["head.op_list.3.linear.bias"], sd["head.op_list.3.linear.bias"])


def test_safetensors_round_trip(seeded, b1_reference: torch.Tensor, tmp_path: Path) -> None:
    sd = seeded("efficientvit_cls_b1")
    save_file(sd, str(tmp_path / "b1.safetensors"))
    loaded = load_state_dict(tmp_path / "b1.safetensors")
    assert set(loaded) == set(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)  # safetensors reorders
    assert torch.equal(run(create_model("efficientvit-b1-r224", tmp_path / "b1.safetensors")), b1_reference)
    # recognised by content whatever the suffix
    (tmp_path / "b1.bin").write_bytes((tmp_path / "b1.safetensors").read_bytes())
    assert torch.equal(run(create_model("efficientvit-b1-r224", tmp_path / "b1.bin")), b1_reference)


def test_half_precision_checkpoint_loads(seeded, tmp_path: Path) -> None:
    sd = {k: v.half() if v.is_floating_point() else v for k, v in seeded("efficientvit_cls_b1").items()}
    torch.save(sd, tmp_path / "fp16.pt")
    model = create_model("efficientvit-b1-r224", tmp_path / "fp16.pt")
    assert next(model.parameters()).dtype == torch.float32


def test_missing_bn_step_counters_are_tolerated(seeded, b1_reference: torch.Tensor) -> None:
    sd = {k: v for k, v in seeded("efficientvit_cls_b1").items() if not k.endswith("num_batches_tracked")}
    assert torch.equal(run(create_model("efficientvit-b1-r224", sd)), b1_reference)


def test_sha256_of_a_weights_file_is_plain_sha256(tmp_path: Path) -> None:
    from evit_deploy.manifest import sha256_path

    data = bytes(range(256)) * 9000  # larger than one read chunk
    (tmp_path / "f").write_bytes(data)
    assert sha256_path(tmp_path / "f") == hashlib.sha256(data).hexdigest()


# --- timm layout --------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_timm_mapping_matches_the_timm_key_lists(variant: str, reference_dir: Path) -> None:
    official = read_keys(reference_dir / "state_dict_keys" / f"efficientvit_cls_{variant}.txt")
    timm = read_keys(reference_dir / "timm_state_dict_keys" / f"efficientvit_{variant}.txt")
    family = variant[0].upper()
    as_timm = official_to_timm(dict(official), family)
    assert list(as_timm.items()) == timm  # names, shapes and order
    assert detect_layout(as_timm) == ("timm", family)
    assert list(timm_to_official(dict(timm)).items()) == official


@pytest.mark.parametrize(("name", "builder", "suffix"), [
    ("efficientvit-b1-r224", "efficientvit_cls_b1", ".pth"),
    ("efficientvit-b1-r224", "efficientvit_cls_b1", ".safetensors"),
    ("efficientvit-l1-r224", "efficientvit_cls_l1", ".safetensors"),
])
def test_timm_layout_gives_the_official_output(name: str, builder: str, suffix: str, seeded,
                                               tmp_path: Path) -> None:
    official = seeded(builder)
    timm = official_to_timm(official, builder[-2].upper())
    assert "stem.in_conv.conv.weight" in timm and not any(k.startswith("backbone.") for k in timm)
    path = tmp_path / f"timm{suffix}"
    if suffix == ".pth":
        torch.save(timm, path)
    else:
        save_file(timm, str(path))
    expected = run(create_model(name, official), 64)
    assert torch.equal(run(create_model(name, path), 64), expected)


def test_timm_features_only_is_refused(seeded) -> None:
    timm = official_to_timm(seeded("efficientvit_cls_b1"), "B")
    flat = {k.replace("stem.", "stem_", 1).replace("stages.", "stages_", 1): v for k, v in timm.items()
            if not k.startswith("head.")}
    with pytest.raises(UsageError, match="timm features_only state dict"):
        create_model("efficientvit-b1-r224", flat)


# --- bad input: one line each, exit code 2 -----------------------------------------------------

def expect_usage_error(fn, *patterns: str) -> str:
    with pytest.raises(UsageError) as err:
        fn()
    text = str(err.value)
    assert err.value.exit_code == 2 and "\n" not in text, text
    for pattern in patterns:
        assert pattern in text, text
    return text


def test_missing_file(tmp_path: Path) -> None:
    expect_usage_error(lambda: create_model("efficientvit-b1-r224", tmp_path / "nope.pt"),
                       f"weights file not found: {tmp_path / 'nope.pt'}")
    expect_usage_error(lambda: load_state_dict(tmp_path), "weights path is not a file")


@pytest.mark.parametrize(("content", "what"), [
    (b"epoch,loss\n1,0.5\n", "(it looks like text)"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(200), "(it looks like a JPEG image)"),
    (b"", "(it is empty)"),
])
def test_not_a_checkpoint(content: bytes, what: str, tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    expect_usage_error(lambda: create_model("efficientvit-b1-r224", path), f"{path} is not a checkpoint {what}")


def test_pickle_of_a_non_dict(tmp_path: Path) -> None:
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    expect_usage_error(lambda: load_state_dict(tmp_path / "list.pt"),
                       "is not a checkpoint: it holds a list, not a state dict")
    torch.save({"epoch": 3, "config": {"lr": 0.1}}, tmp_path / "meta.pt")
    expect_usage_error(lambda: load_state_dict(tmp_path / "meta.pt"),
                       "no state dict at the top level or under state_dict, model", "'epoch', 'config'")


def test_weights_only_refusal(tmp_path: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(1)}, "config": NotWeights()}, tmp_path / "obj.pt")
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump(NotWeights(), f)
    for path in (tmp_path / "obj.pt", tmp_path / "plain.pkl"):
        text = expect_usage_error(lambda p=path: create_model("efficientvit-b1-r224", p),
                                  "test_checkpoints.NotWeights", "evit loads weights only",
                                  "never unpickles arbitrary objects", "torch.save(model.state_dict()")
        assert "weights_only=False" not in text
    marker = tmp_path / "code-ran"
    torch.save({"w": torch.zeros(1), "x": Trap(marker)}, tmp_path / "trap.pt")
    expect_usage_error(lambda: load_state_dict(tmp_path / "trap.pt"), "mkdir", "evit loads weights only")
    assert not marker.exists()


def test_truncated_safetensors(seeded, tmp_path: Path) -> None:
    save_file(seeded("efficientvit_cls_b0"), str(tmp_path / "b0.safetensors"))
    data = (tmp_path / "b0.safetensors").read_bytes()
    for cut in (len(data) // 2, 20, 3):
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(data[:cut])
        expect_usage_error(lambda p=path: create_model("efficientvit-b0-r224", p),
                           f"{path} is truncated or not a safetensors file")
    (tmp_path / "text.safetensors").write_text("not a tensor file")
    expect_usage_error(lambda: load_state_dict(tmp_path / "text.safetensors"), "truncated or not a safetensors file")


def test_truncated_pt(seeded, tmp_path: Path) -> None:
    torch.save(seeded("efficientvit_cls_b0"), tmp_path / "b0.pt")
    data = (tmp_path / "b0.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    expect_usage_error(lambda: load_state_dict(tmp_path / "cut.pt"), "is truncated or corrupt")


def test_checkpoint_of_another_variant(seeded, tmp_path: Path) -> None:
    torch.save(seeded("efficientvit_cls_b2"), tmp_path / "b2.pt")
    text = expect_usage_error(lambda: create_model("efficientvit-b1-r224", tmp_path / "b2.pt"),
                              f"{tmp_path / 'b2.pt'} does not fit efficientvit-b1-r224: ",
                              "0 missing, 93 unexpected and 236 shape-mismatched keys; ",
                              "shape-mismatched (file vs model): backbone.input_stem.op_list.0.conv.weight [24, 3, 3, 3] "
                              "vs [16, 3, 3, 3]",
                              "it looks like a checkpoint of efficientvit-b2-r224 / efficientvit-b2-r256 / "
                              "efficientvit-b2-r288")
    assert "unexpected: backbone.stages.0.op_list.2.main.inverted_conv.conv.weight, " in text


def test_counts_in_the_mismatch_message(seeded) -> None:
    sd = seeded("efficientvit_cls_b1")
    del sd["head.op_list.3.linear.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["head.op_list.2.norm.weight"] = torch.zeros(7)
    expect_usage_error(lambda: create_model("efficientvit-b1-r224", sd),
                       "does not fit efficientvit-b1-r224: 1 missing, 1 unexpected and 1 shape-mismatched keys; "
                       "missing: head.op_list.3.linear.bias; unexpected: extra.weight; shape-mismatched (file vs "
                       "model): head.op_list.2.norm.weight [7] vs [1600]")


def test_segmentation_and_classification_are_told_apart(seeded) -> None:
    expect_usage_error(lambda: create_model("efficientvit-seg-b1-ade20k", seeded("efficientvit_seg_b1_cityscapes")),
                       "does not fit efficientvit-seg-b1-ade20k",
                       "it looks like a checkpoint of efficientvit-seg-b1-cityscapes")
    timm_l1 = official_to_timm(seeded("efficientvit_cls_l1"), "L")
    expect_usage_error(lambda: create_model("efficientvit-seg-l1-cityscapes", timm_l1),
                       "the given state dict (timm layout, renamed) does not fit efficientvit-seg-l1-cityscapes",
                       "it looks like a checkpoint of efficientvit-l1-r224")


def test_fine_tuned_head_is_named(seeded) -> None:
    sd = seeded("efficientvit_cls_b0")
    sd["head.op_list.3.linear.weight"] = torch.zeros(10, sd["head.op_list.3.linear.weight"].shape[1])
    sd["head.op_list.3.linear.bias"] = torch.zeros(10)
    expect_usage_error(lambda: create_model("efficientvit-b0-r224", sd), "2 shape-mismatched",
                       "it looks like efficientvit-b0-r224 fine-tuned for 10 classes (the card has 1000)")


# ---------------------------------------------------------------------------------------------
# Non-finite weights (issue 14 item 13)

@pytest.mark.filterwarnings("ignore:efficientvit-b0-r224 has random weights")
@pytest.mark.parametrize("poison", ["nan", "inf", "-inf"])
def test_export_refuses_nonfinite_weights_naming_the_first(poison: str, tmp_path: Path, cli) -> None:
    from evit_deploy import zoo

    sd = zoo.create_model("efficientvit-b0-r224", None, seed=0).state_dict()
    names = [k for k, v in sd.items() if v.is_floating_point()]
    first, later = names[3], names[-1]
    sd[first].view(-1)[:2] = float(poison)
    sd[later].view(-1)[0] = float("nan")
    weights = tmp_path / "bad.pt"
    torch.save(sd, weights)
    out = tmp_path / "out"
    result = cli("export", "efficientvit-b0-r224", "--weights", weights, "--resolution", "64x64", "--out", out)
    assert result.code == 2, result
    (line,) = result.error_lines
    label = "NaN" if poison == "nan" else "Inf"
    assert line == (f"error: {weights}: tensor {first!r} holds 2 {label} of its {sd[first].numel()} values "
                    "(1 more tensor(s) too); evit refuses non-finite weights: use a checkpoint from before "
                    "the run diverged"), line
    assert not out.exists() or not any(out.iterdir())
