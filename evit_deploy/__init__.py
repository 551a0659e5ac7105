"""evit: deploy EfficientViT models."""
