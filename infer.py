"""Turn a story into a storyboard with a trained LoRA.  Example: python infer.py lora.path=outputs/train/<run>/lora
(installed: aldar-infer)"""

from aldar_lit.cli import infer

if __name__ == "__main__":
    infer()
