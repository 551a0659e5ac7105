"""Converter-friendly rewrites of model pieces that deployment formats lack (shared by targets)."""
