"""Filter raw renders into a training set.  python -m aldar_lit.curate input_dir=raw/ output_dir=kept/
(installed: aldar-curate)

Drops near-duplicates, blurry and small images (and, optionally, images without a detectable face),
and writes the kept set to <output_dir>/images (train on it with data.root=<output_dir>/images)
with report.json, report.md and contact_sheet.png beside it.
"""

from aldar_lit.cli import curate

if __name__ == "__main__":
    curate()
