"""The model zoo: one validated card per official EfficientViT model, and models built from them.

Cards are data (``models/<name>.yaml``, read with ``yaml.safe_load``): what the model is
(task, family, variant, dataset, classes), how to feed it (input size, preprocessing),
how to build it (builder, kwargs, norm eps), which official checkpoint fits it, and the
published figures with their source tags. ``computed:`` holds params/MACs counted from
the built model (``scripts/update_card_stats.py`` writes it; a test recomputes it).

``cards`` is the schema, ``registry`` finds cards, ``build`` makes modules. Importing the
package does not import torch: ``evit models`` stays fast.
"""
from __future__ import annotations

from evit_deploy.zoo.build import RandomWeightsWarning, create_model
from evit_deploy.zoo.cards import (
    ComputedStats,
    Latency,
    ModelCard,
    OutputSpec,
    Preprocessing,
    Published,
    figure_resolution,
    parse_figure,
)
from evit_deploy.zoo.registry import get_card, list_cards, load_card, model_names, register_card

__all__ = [
    "ComputedStats",
    "Latency",
    "ModelCard",
    "OutputSpec",
    "Preprocessing",
    "Published",
    "RandomWeightsWarning",
    "create_model",
    "figure_resolution",
    "get_card",
    "list_cards",
    "load_card",
    "model_names",
    "parse_figure",
    "register_card",
]
