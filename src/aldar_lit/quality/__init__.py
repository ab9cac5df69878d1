"""Image quality measures: CLIP/DINO embedders for prompt and subject fidelity, and storyboard QA."""
