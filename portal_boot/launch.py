"""``python -m portal_boot.launch TARGET APP [uvicorn options]``: run uvicorn with the
plugin target appended to ``sys.path`` (after site-packages, so the image's own
packages win). This is what :func:`portal_boot.serve.exec_uvicorn` execs."""

from __future__ import annotations

import os
import sys


def main() -> None:
    target, *uvicorn_args = sys.argv[1:]
    if os.path.isdir(target):
        sys.path.append(target)
    # uvicorn imports the app relative to the working directory, as its own CLI does.
    from uvicorn.main import main as uvicorn_main

    uvicorn_main(args=uvicorn_args, prog_name="uvicorn")


if __name__ == "__main__":
    main()
