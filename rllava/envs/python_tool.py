"""`python`: run model-written code in the sandbox (see `sandbox.py` for what is enforced)."""
from __future__ import annotations

import dataclasses
from typing import Any

from rllava.envs.base import TOOLS, Observation, ToolContext, check_arguments
from rllava.envs.sandbox import run_python

PYTHON_PARAMETERS = {
    "type": "object",
    "properties": {"code": {"type": "string", "description": "a Python program; print what you want to see"}},
    "required": ["code"],
}


def _export_images(ctx: ToolContext) -> int:
    """Save the episode's images as image_0.png, ... in the work folder (once each) so code can open them; their
    size in MiB, rounded up."""
    size = 0
    for i, img in enumerate(ctx.images):
        path = ctx.work_dir / f"image_{i}.png"
        if path.is_symlink():  # planted by earlier code: writing through it would write outside the folder
            path.unlink()
        if not path.exists():
            with open(path, "xb") as f:  # O_EXCL: never follows a link created in between
                img.save(f, format="PNG")
        size += path.lstat().st_size
    return -(-size // (1 << 20))


@TOOLS.register("python", parameters=PYTHON_PARAMETERS)
def python(args: dict[str, Any], ctx: ToolContext) -> Observation:
    """Run Python code in a sandbox (no network, private folder with the images as image_0.png, ...); returns its output."""
    args = check_arguments(args, PYTHON_PARAMETERS, "python")
    limits = ctx.settings.python
    # The disk quota is for what the code writes: the images come on top (a few photos as PNG fill 64 MB, and every
    # call of the episode would then fail over the quota).
    limits = dataclasses.replace(limits, disk_mb=limits.disk_mb + _export_images(ctx)) if limits.disk_mb else limits
    # The work folder persists across the episode's calls: files written in one call are there in the next.
    result = run_python(args["code"], limits, work_dir=ctx.work_dir)
    return Observation(text=result.to_text())
