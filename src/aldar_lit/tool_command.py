"""The command line a tool prints for the user's next step (a storyboard after training, an evaluation after a
storyboard, a resume), in the form the user started this one: the console script `aldar-<tool>` of an installed
package, which runs from any directory, or `python <tool>.py` in a checkout."""

from __future__ import annotations

import sys
from pathlib import Path


def tool_command(tool: str, checkout_script: str | None = None) -> list[str]:
    """`[aldar-<tool>]` when this process is one of the console scripts, else `[python, checkout_script]` (default
    `<tool>.py`; the resume command passes the script path as typed)."""
    if Path(sys.argv[0]).name.startswith("aldar-"):
        return [f"aldar-{tool}"]
    return ["python", checkout_script or f"{tool}.py"]
