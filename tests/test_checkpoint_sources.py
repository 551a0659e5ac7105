"""A newcomer without the official checkpoint is told where it is (issue 17): the cards carry the official
README's download links, and the missing-weights error and `evit models show` name them. evit downloads nothing."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from evit_deploy import zoo

CARDS = zoo.list_cards()
NO_LINK = {"efficientvit-b0-r224"}  # shared by the maintainers in issues, not in the README tables


@pytest.fixture(scope="module")
def hubs(reference_dir: Path) -> dict[str, str]:
    """Task -> download prefix, from zoo_facts.md section 2.2 (the official READMEs' links)."""
    text = (reference_dir / "zoo_facts.md").read_text()
    found = dict(re.findall(r"^\| (cls|seg|SAM) \|.*\| `(https://\S+)<file>` \|$", text, re.MULTILINE))
    assert set(found) == {"cls", "seg", "SAM"}, found
    return {"classification": found["cls"], "segmentation": found["seg"]}


@pytest.mark.parametrize("card", CARDS, ids=[c.name for c in CARDS])
def test_every_card_names_the_official_download_address(card: zoo.ModelCard, hubs: dict[str, str]) -> None:
    if card.name in NO_LINK:
        assert card.checkpoint_url is None
        assert card.checkpoint_source().startswith(f"no official download address is published for {card.checkpoint}")
    else:
        assert card.checkpoint_url == hubs[card.task] + card.checkpoint
        assert card.checkpoint_url in card.checkpoint_source()


def test_the_readmes_main_job_without_the_checkpoint_says_where_it_is(cli, tmp_path: Path, monkeypatch) -> None:
    """The README's first command, run by someone who has not downloaded the checkpoint yet."""
    monkeypatch.chdir(tmp_path)
    result = cli("export", "efficientvit-seg-b1-cityscapes", "--weights", "efficientvit_seg_b1_cityscapes.pt",
                 "--target", "onnx", "--out", "out")
    assert result.code == 2, result
    assert result.error_lines == [(
        "error: efficientvit_seg_b1_cityscapes.pt: weights file not found; the official checkpoint "
        "efficientvit_seg_b1_cityscapes.pt is at "
        "https://huggingface.co/han-cai/efficientvit-seg/resolve/main/efficientvit_seg_b1_cityscapes.pt (evit "
        "downloads nothing); or leave out --weights to try efficientvit-seg-b1-cityscapes with random weights")]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["eval", "efficientvit-b1-r224", "--data", "."],
                                     ["profile", "efficientvit-b1-r224", "--target", "torch"],
                                     ["benchmark", "efficientvit-b1-r224"]])
def test_every_command_that_takes_a_zoo_checkpoint_says_where_it_is(cli, tmp_path: Path, monkeypatch,
                                                                    command: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli(*command, "--weights", "b1.pt")
    assert result.code == 2 and len(result.error_lines) == 1, result
    assert ("weights file not found; the official checkpoint efficientvit_b1_r224.pt is at "
            "https://huggingface.co/han-cai/efficientvit-cls/resolve/main/efficientvit_b1_r224.pt") in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_card_without_an_official_link_says_so(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli("export", "efficientvit-b0-r224", "--weights", "b0.pt")
    assert result.code == 2
    assert "no official download address is published for efficientvit_b0_r224.pt" in result.error_lines[0]


def test_models_show_names_the_download_address(cli) -> None:
    result = cli("models", "show", "efficientvit-seg-b1-cityscapes")
    assert result.code == 0
    assert result.stdout.splitlines()[-1] == (
        "download: the official checkpoint efficientvit_seg_b1_cityscapes.pt is at "
        "https://huggingface.co/han-cai/efficientvit-seg/resolve/main/efficientvit_seg_b1_cityscapes.pt "
        "(evit downloads nothing)")


def test_a_missing_file_of_an_unknown_model_stays_a_plain_not_found() -> None:
    from evit_deploy.errors import UsageError
    from evit_deploy.requests import ExportRequest

    with pytest.raises(UsageError, match=r"^x\.pt: weights file not found$"):
        ExportRequest.parse(model="efficientvit-nope", weights="x.pt")
