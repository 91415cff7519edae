"""Issue 11.3: portal-boot's own lines (and Alembic's progress lines it relays) keep
portal-boot's handler, format, level and scrub filter whatever the application does to
logging: a revision imports an application module that calls ``dictConfig`` (a root
handler of its own at WARNING, disable_existing_loggers) or ``fileConfig``, then fails
with the database URL in its message. Through the CLI, on a real PostgreSQL."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cli_helpers import portal_boot
from sqlalchemy.engine import make_url
from test_migrations_support import copy_example, revision

_DICT_CONFIG = '''
import logging, logging.config
logging.config.dictConfig({
    "version": 1,
    "formatters": {"app": {"format": "APP|%(levelname)s|%(name)s|%(message)s"}},
    "handlers": {"app": {"class": "logging.StreamHandler", "formatter": "app"}},
    "root": {"level": "WARNING", "handlers": ["app"]},
})
logging.getLogger("app.applog").warning("logging configured by the application")
'''

_FILE_CONFIG = '''
import logging, logging.config, pathlib, tempfile
ini = pathlib.Path(tempfile.mkdtemp()) / "logging.ini"
ini.write_text("""
[loggers]
keys = root, alembic
[handlers]
keys = app
[formatters]
keys = app
[logger_root]
level = WARNING
handlers = app
[logger_alembic]
level = ERROR
handlers = app
qualname = alembic
propagate = 0
[handler_app]
class = StreamHandler
args = (sys.stderr,)
formatter = app
[formatter_app]
format = APP|%(levelname)s|%(name)s|%(message)s
""")
logging.config.fileConfig(str(ini))
logging.getLogger("app.applog").warning("logging configured by the application")
'''

_FAILING = """
import os
import app.applog  # noqa: F401 - configures logging, as the real app's modules do
op.create_table('t3', sa.Column('id', sa.Integer(), primary_key=True))
raise RuntimeError("cannot reach " + os.environ["PORTAL_BOOT_DATABASE_URL"])
"""

_TEXT_LINE = re.compile(r"^\d\d:\d\d:\d\d portal-boot (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
_APP_LINE = "APP|WARNING|app.applog|logging configured by the application"


@pytest.mark.parametrize("how", ["dictConfig", "fileConfig"])
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_application_cannot_take_over_portal_boots_logging(
    how: str, log_format: str, tmp_path: Path, pg_url: str, clean_env: dict[str, str]
) -> None:
    ini = copy_example(tmp_path / "portal")
    portal = ini.parent
    (portal / "app" / "applog.py").write_text(_DICT_CONFIG if how == "dictConfig" else _FILE_CONFIG)
    (portal / "app/database/alembic/versions/core_0003_fails.py").write_text(
        revision("core_0003", "core_0002", upgrade=_FAILING)
    )
    password = make_url(pg_url).password
    assert password
    result = portal_boot(
        "run", "--log-format", log_format,
        env={
            **clean_env,
            "PORTAL_BOOT_DATABASE_URL": pg_url,
            "PORTAL_BOOT_ALEMBIC_CONFIG": str(ini),
            "PORTAL_BOOT_TARGET": str(tmp_path / "plugins"),
        },
        cwd=portal,
    )  # fmt: skip
    assert result.returncode == 6, result.stderr
    assert password not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    # What the application logs is its business; nothing of portal-boot's went its way.
    assert [line for line in lines if line.startswith("APP|")] == [_APP_LINE]
    ours = [line for line in lines if not line.startswith("APP|")]
    if log_format == "json":
        records = [json.loads(line) for line in ours]  # every line is one JSON object
        messages = [(r.get("logger"), r["message"]) for r in records]
        assert all(r["level"] for r in records)
    else:
        assert all(_TEXT_LINE.match(line) or line.startswith("portal-boot: ") for line in ours), ours
        messages = [(None, line) for line in ours]
    text = "\n".join(message for _, message in messages)
    # Alembic's progress line, after the application configured logging.
    assert "Running upgrade core_0002 -> core_0003" in text
    # The step's failure and the closing error line, in portal-boot's format.
    assert re.search(r"migrate: failed in \d+ ms", text)
    assert "revision core_0003 (the application) failed: RuntimeError: cannot reach" in text
    assert "***" in text
