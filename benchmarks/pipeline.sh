#!/bin/sh
# The deployment guide's start-up, as one POSIX shell script: the baseline (b) of
# benchmarks/boot.py. It is the guide's init containers and backend in sequence:
#
#   pip install --target=/plugins <plugins>                         (install)
#   cp /plugins/*/migration/*.py /app/app/database/alembic/versions/ (copy migrations)
#   alembic upgrade head                                            (migrate)
#   alembic -c /plugins/<p>/migrations/alembic.ini upgrade heads    (plugins with their
#                                                                    own environment)
#   exec uvicorn app.main:app --host 0.0.0.0 --port 8000            (serve)
#
# with PYTHONPATH=/app:/plugins, as the guide sets it. No signature is checked (the
# guide checks none). Three deliberate differences, none of which makes it slower:
#   - pip installs from the local wheel folder with --no-index and --no-deps, so the
#     benchmark stays on loopback (the plugins' only requirement, SQLAlchemy, is in the
#     image already) and --disable-pip-version-check (no network call either);
#     --upgrade, so a warm boot really replaces what is there (without it pip leaves
#     the old files and only warns);
#   - `alembic upgrade heads`, not `head`: with plugin branches there are several heads,
#     and `head` fails;
#   - no `|| true` after cp: a failed copy should fail the boot, not hide.
#
# Environment: WHEEL_DIR (the *.whl files), TARGET (pip's --target), APP_DIR (a copy of
# the example portal whose alembic.ini holds the database URL), HOST, PORT; pip,
# alembic and uvicorn on PATH (the benchmark puts the venv's bin/ first).
set -eu

cd "$APP_DIR"
pip install --quiet --disable-pip-version-check --no-index --no-deps --upgrade \
  --target "$TARGET" "$WHEEL_DIR"/*.whl
cp "$TARGET"/*/migration/*.py app/database/alembic/versions/
export PYTHONPATH="$APP_DIR:$TARGET"
alembic -c alembic.ini upgrade heads
# Plugins that bring their own Alembic environment (migrations/env.py, its own version
# table; the guide's `flask plugin upgrade-all`): each its own upgrade, after the core's,
# on the database the portal's alembic.ini names (configparser's %% undone).
url=$(sed -n 's/^sqlalchemy\.url = //p' alembic.ini | sed 's/%%/%/g')
for ini in "$TARGET"/*/migrations/alembic.ini; do
  [ -e "$ini" ] || continue
  alembic -c "$ini" -x url="$url" upgrade heads
done
exec uvicorn app.main:app --host "$HOST" --port "$PORT"
