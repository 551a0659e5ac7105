#!/usr/bin/env python
"""Write (or check) the ``computed:`` block of every model card: params and MACs counted from the
built model at the card's input size (evit_deploy.complexity; meta device, a few seconds in all).

    .venv/bin/python scripts/update_card_stats.py           # rewrite the blocks
    .venv/bin/python scripts/update_card_stats.py --check   # exit 1 if any block is stale

tests/test_zoo.py recomputes the same numbers, so a stale card fails the suite.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from evit_deploy._resources import data_dir
from evit_deploy.complexity import card_stats, count_params, counted_with, graph_stats
from evit_deploy.zoo import load_card

HEADER = "computed:   # written by scripts/update_card_stats.py; do not edit by hand\n"
_BLOCK = re.compile(r"^computed:.*\Z", re.DOTALL | re.MULTILINE)


def render(params: int, macs: int, input_size: tuple[int, int], tool: str) -> str:
    return (HEADER + f"  params: {params}\n  macs: {macs}\n"
            f"  input_size: [{input_size[0]}, {input_size[1]}]\n  counted_with: {tool}\n")


def render_graphs(params: int, graphs: dict[str, dict[str, Any]], tool: str) -> str:
    """A several-graph card's block: whole-model params, then each graph at its static export's sizes."""
    lines = [HEADER, f"  params: {params}\n", "  graphs:\n"]
    for name, stats in graphs.items():
        inputs = ", ".join(f"{k}: [{', '.join(map(str, v))}]" for k, v in stats["inputs"].items())
        lines.append(f"    {name}: {{params: {stats['params']}, macs: {stats['macs']}, inputs: {{{inputs}}}}}\n")
    lines.append(f"  counted_with: {tool}\n")
    return "".join(lines)


def fresh_block(card: Any, tool: str) -> tuple[bool, str, str]:
    """(up to date?, the block as it should be, a one-line summary) for one card."""
    current = card.computed
    if card.graphs:
        import torch

        from evit_deploy.nn import build_model

        with torch.device("meta"):
            params = count_params(build_model(card.builder, norm_eps=card.norm_eps, **card.builder_kwargs))
        graphs = graph_stats(card)
        fresh = (current is not None and current.params == params and
                 {k: v.model_dump(mode="json") for k, v in current.graphs.items()} == graphs)
        summary = ", ".join(f"{k} {v['macs'] / 1e9:.3f}G MACs" for k, v in graphs.items())
        return fresh, render_graphs(params, graphs, tool), f"params {params:,}, {summary}"
    stats = card_stats(card)
    fresh = (current is not None and current.params == stats["params"] and current.macs == stats["macs"]
             and tuple(current.input_size or ()) == tuple(card.input_size))
    return fresh, render(stats["params"], stats["macs"], card.input_size, tool), \
        f"params {stats['params']:,}, MACs {stats['macs'] / 1e9:.3f}G"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale cards (exit 1 if any)")
    parser.add_argument("--models-dir", type=Path, default=data_dir("models"))
    args = parser.parse_args(argv)
    tool = counted_with()
    stale = []
    for path in sorted(args.models_dir.glob("*.yaml")):
        card = load_card(path)
        fresh, block, summary = fresh_block(card, tool)
        if fresh:
            continue
        stale.append(card.name)
        if not args.check:
            text = _BLOCK.sub("", path.read_text(encoding="utf-8")).rstrip("\n") + "\n"
            path.write_text(text + block, encoding="utf-8")
            print(f"{card.name}: {summary}")
    if args.check and stale:
        print(f"stale computed: block in {len(stale)} card(s): {', '.join(stale)}; "
              "run scripts/update_card_stats.py", file=sys.stderr)
        return 1
    if not stale:
        print("all computed: blocks are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
