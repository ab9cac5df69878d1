"""Caption a folder of images with a vision LLM.  python -m aldar_lit.caption input_dir=/path/to/renders
(installed: aldar-caption)

The API key comes from the OPENAI_API_KEY environment variable only. `dry_run=true` lists what
would be captioned and the estimated cost without calling the API. Exits non-zero if any image failed
(each is listed with its reason in caption_report.json).
"""

from aldar_lit.cli import caption

if __name__ == "__main__":
    caption()
