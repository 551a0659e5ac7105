"""``evit models``: the zoo at a glance, and one card in full.

Listing reads the cards only (params and MACs come from their ``computed:`` blocks), so it
does not import torch and answers in a fraction of a second.
"""
from __future__ import annotations

import json
import re
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from evit_deploy.cli._errors import handle_errors
from evit_deploy.errors import UsageError

models_app = typer.Typer(
    help="The model zoo: list the official EfficientViT cls, seg and SAM models (params, MACs, published "
    "accuracy); show NAME prints one card.",
    invoke_without_command=True,
    pretty_exceptions_enable=False,
)

_SHORT_TASK = {"classification": "cls", "segmentation": "seg", "sam": "sam"}
_TASKS = {"cls": "classification", "classification": "classification",
          "seg": "segmentation", "segmentation": "segmentation", "sam": "sam"}


def _console() -> Console:
    return Console(soft_wrap=True)


def fmt_params(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.3g}M"


def fmt_macs(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e9:.3g}G"


def fmt_size(size: tuple[int, int] | list[int]) -> str:
    return f"{size[0]}x{size[1]}"


def parse_size(text: str) -> tuple[int, int]:
    """``512x1024`` -> (512, 1024); ``224`` -> (224, 224)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+))?\s*", text)
    if not m or int(m[1]) == 0 or (m[2] is not None and int(m[2]) == 0):
        raise UsageError(f"input size {text!r} is not HxW (e.g. 512x1024) or a single side (e.g. 224)")
    h = int(m[1])
    return h, int(m[2]) if m[2] else h


def _summary(card: Any) -> dict[str, Any]:
    pub = card.published
    return {
        "name": card.name,
        "task": card.task,
        "family": card.family,
        "variant": card.variant,
        "dataset": card.dataset,
        "input_size": list(card.input_size),
        "params": card.params,
        "macs": card.macs,
        "published": {"top1": pub.top1, "top5": pub.top5, "miou": pub.miou, "coco_map": pub.coco_map,
                      "lvis_map": pub.lvis_map, "params": pub.params, "macs": pub.macs, "source": pub.source},
        "checkpoint": card.checkpoint,
        "checkpoint_url": card.checkpoint_url,
        "graphs": [g.name for g in card.graphs],
    }


@models_app.callback()
def models(
    ctx: typer.Context,
    task: Annotated[str | None, typer.Option(help="Only this task: cls, seg or sam.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Only this dataset: imagenet, cityscapes, ade20k, "
                                                     "sa-1b.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of a table.")] = False,
) -> None:
    """List the zoo: name, task, input size, params, MACs and the published accuracy.

    Params and MACs are counted from the built model (MACs at the listed input size,
    batch 1; SAM: the image encoder's); the published column is the official README figure.
    """
    if ctx.invoked_subcommand is not None:
        return
    from evit_deploy.zoo import list_cards

    with handle_errors():
        cards = list_cards()
        if task is not None:
            if task.lower() not in _TASKS:
                raise UsageError(f"unknown task {task!r}; choose cls, seg or sam")
            cards = [c for c in cards if c.task == _TASKS[task.lower()]]
        if dataset is not None:
            known = sorted({c.dataset for c in list_cards()})
            if dataset.lower() not in known:
                raise UsageError(f"unknown dataset {dataset!r}; choose one of {', '.join(known)}")
            cards = [c for c in cards if c.dataset == dataset.lower()]
        if as_json:
            print(json.dumps([_summary(c) for c in cards], indent=2))
            return
        table = Table(title=f"EfficientViT zoo: {len(cards)} models", title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True,
                      pad_edge=False)
        for column in ("name", "task", "input", "params", "MACs", "published"):
            table.add_column(column, justify="right" if column in ("input", "params", "MACs") else "left",
                             no_wrap=True)
        for c in cards:
            table.add_row(c.name, _SHORT_TASK[c.task], fmt_size(c.input_size), fmt_params(c.params),
                          fmt_macs(c.macs), c.published.metric)
        console = _console()
        console.print(table)
        console.print("params, MACs: counted (MACs at the input size, batch 1; SAM: its image encoder); "
                      "published: official accuracy. evit models show NAME: the whole card.", style="dim")


@models_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="A zoo name, e.g. efficientvit-seg-b1-cityscapes.")],
    input_size: Annotated[str | None, typer.Option(
        "--input-size", help="Also count MACs at HxW (e.g. 512x1024); builds the model, ~2 s.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the card as JSON on stdout.")] = False,
) -> None:
    """Every field of one model card, with the counted params and MACs."""
    from evit_deploy.zoo import get_card

    with handle_errors():
        card = get_card(name)
        extra: dict[str, Any] = {}
        if input_size is not None:
            from evit_deploy.complexity import card_stats

            size = parse_size(input_size)
            extra = {"input_size": list(size), "macs": card_stats(card, size)["macs"]}
        if as_json:
            data = card.to_dict()
            data["output_shape"] = list(card.output_shape) if card.output_shape is not None else None
            if extra:
                data["macs_at"] = extra
            print(json.dumps(data, indent=2))
            return
        _print_card(card, extra)


def _print_card(card: Any, extra: dict[str, Any]) -> None:
    pub = card.published
    pre = card.preprocessing
    resize = {
        "shorter_side_center_crop": f"shorter side -> {pre.resize_shorter}, center crop {fmt_size(card.input_size)} "
                                    f"(crop ratio {pre.crop_ratio})",
        "fixed": f"resize to {fmt_size(pre.resize_to or card.input_size)}",
        "shorter_side_keep_aspect": f"shorter side -> {pre.resize_shorter}, long side rounded up to a multiple "
                                    f"of {pre.size_multiple}",
        "longest_side_pad": f"long side -> {pre.resize_longest}, zero pad bottom/right to "
                            f"{fmt_size(pre.pad_to or card.input_size)}",
    }[pre.resize]
    kwargs = ", ".join(f"{k}={v!r}" for k, v in card.builder_kwargs.items())

    def pct(counted: int | None, published: float | None) -> str:
        if counted is None or not published:
            return ""
        return f" ({counted / published - 1:+.1%} vs published)"

    rows: list[tuple[str, str]] = [
        ("name", card.name),
        ("task", card.task),
        ("family / variant", f"{card.family} / {card.variant}"),
        ("dataset", card.dataset),
    ]
    if card.output is not None:
        classes = card.classes
        shown = ", ".join(classes[:6]) + (", ..." if len(classes) > 6 else "")
        rows.append(("classes", f"{card.num_classes}: {shown}"))
    rows += [
        ("input size", f"{fmt_size(card.input_size)} (HxW)"),
        ("preprocessing", (f"{pre.color}, {resize}, {pre.interpolation}; mean {list(pre.mean)}, std {list(pre.std)} "
                          "(0..1 scale)")),
    ]
    if card.output is not None:
        rows.append(("output", f"{card.output.name} {list(card.output_shape)}: {card.output.description}"))
    if card.prompt_frame is not None:
        frame = f"{card.prompt_frame}x{card.prompt_frame}: point and box coordinates, upscaled masks"
        rows.append(("prompt frame", frame))
    for key, text in (card.postprocessing or {}).items():
        rows.append((f"postprocessing ({key})", text))
    for graph in card.graphs:
        rows.append((f"graph {graph.name}", _graph_line(graph, card.computed)))
    checkpoint = card.checkpoint + (f" (also released as {', '.join(card.checkpoint_aliases)})"
                                    if card.checkpoint_aliases else "")
    whose = f" ({card.graphs[0].name})" if card.graphs else ""  # SAM: the image encoder's, as published
    rows += [
        ("builder", f"{card.builder}({kwargs}), norm eps {card.norm_eps:g}"),
        ("checkpoint", checkpoint),
        ("params", f"{card.params:,} counted{pct(card.params, pub.params_value)}; published {pub.params or '?'}"
         if card.params is not None else f"published {pub.params or '?'}"),
        ("MACs", f"{fmt_macs(card.macs)} at {fmt_size(card.input_size)}{whose} counted"
                 f"{pct(card.macs, pub.macs_value)}; published {pub.macs or '?'}"
         if card.macs is not None else f"published {pub.macs or '?'}"),
    ]
    if extra:
        rows.append(("MACs (asked)", f"{fmt_macs(extra['macs'])} at {fmt_size(extra['input_size'])}"))
    if pub.top1 is not None or pub.top5 is not None:
        rows.append(("published accuracy", f"top-1 {pub.top1}, top-5 {pub.top5} (ImageNet val) [{pub.source}]"))
    elif pub.miou is not None:
        rows.append(("published accuracy", f"mIoU {pub.miou} ({card.dataset} val) [{pub.source}]"))
    elif pub.coco_map is not None:
        maps = f"zero-shot instance segmentation mAP: COCO {pub.coco_map}, LVIS {pub.lvis_map} [{pub.source}]"
        rows.append(("published accuracy", maps))
    else:
        rows.append(("published accuracy", f"unknown [{pub.source}]"))
    for lat in pub.latency:
        batch = "batch not stated" if lat.batch is None else f"bs{lat.batch}"
        rows.append(("published speed", (f"{lat.value:g} {lat.unit} on {lat.device} ({lat.runtime} {lat.precision}, "
                                        f"{batch}) [{lat.source}]")))
    if pub.note:
        rows.append(("note", pub.note))
    if card.computed is not None:
        rows.append(("counted with", card.computed.counted_with))

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for key, value in rows:
        table.add_row(key, Text(value))
    console = _console()
    console.print(table)
    # after the table, unwrapped: an address cut by a column's width cannot be copied
    console.print(f"download: {card.checkpoint_source()}", markup=False, highlight=False)


def _graph_line(graph: Any, computed: Any) -> str:
    """``input_image [batch, 3, 512, 512] -> image_embeddings [...]; dynamic ...; 30.7M params, 34.8G MACs``."""
    def tensors(items: list[Any]) -> str:
        return ", ".join(f"{t.name} [{', '.join(map(str, t.shape))}]" + (f" (--{t.option.replace('_', '-')})"
                                                                          if t.option else "") for t in items)

    parts = [f"{tensors(graph.inputs)} -> {tensors(graph.outputs)}"]
    if graph.dynamic:
        parts.append("dynamic " + ", ".join(f"{d} {lo}..{hi}" for d, (lo, hi) in graph.dynamic.items()))
    if graph.options:
        parts.append("options " + ", ".join(f"--{o.replace('_', '-')}" for o in graph.options))
    stats = computed.graphs.get(graph.name) if computed is not None else None
    if stats is not None:
        parts.append(f"{fmt_params(stats.params)} params, {fmt_macs(stats.macs)} MACs at "
                     + ", ".join(f"{k} {list(v)}" for k, v in stats.inputs.items()))
    return "; ".join(parts)
