"""SDXL parts: loading (pretrained, tiny, full-size random), LoRA attachment and export."""
