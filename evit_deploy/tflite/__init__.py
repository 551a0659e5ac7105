"""The TFLite (LiteRT) backend: litert-torch converts, ai-edge-quantizer quantises, ai-edge-litert runs."""
