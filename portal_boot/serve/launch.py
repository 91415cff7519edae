"""``python -m portal_boot.serve.launch TARGET APP [uvicorn options]``: run uvicorn with the
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
    from uvicorn.main import STARTUP_FAILURE
    from uvicorn.main import main as uvicorn_main

    try:
        uvicorn_main(args=uvicorn_args, prog_name="uvicorn")
    except SystemExit as exc:
        if exc.code != STARTUP_FAILURE:
            raise
        # uvicorn's 3 reads as portal-boot's "signature verification failed": say what
        # it is, with portal-boot's status for a configuration error.
        sys.stderr.write(
            "portal-boot: UsageError: uvicorn could not start the application (its error is "
            "above): check --app / PORTAL_BOOT_APP, --host / PORTAL_BOOT_HOST and --port / "
            "PORTAL_BOOT_PORT\n"
        )
        sys.stderr.flush()
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
