"""Compare baseline / simple / ref_guided storyboards with identity metrics and bootstrap CIs.
Example: python evaluate.py lora.path=outputs/train/<run>/lora reference_images=data/aldar_kose
(installed: aldar-evaluate)"""

from aldar_lit.cli import evaluate

if __name__ == "__main__":
    evaluate()
