"""snowflake_plugin: warehouses

Revision ID: snowflake_0001
Revises:
Create Date: 2026-01-22 09:00:00.000000

The first revision of the plugin's own branch ("snowflake_plugin"); it only needs
the core's first revision.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "snowflake_0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = ("snowflake_plugin",)
depends_on: Union[str, Sequence[str], None] = "core_0001"


def upgrade() -> None:
    op.create_table(
        "snowflake_plugin_warehouses",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("database", sa.String(255), nullable=False),
        sa.Column("schema", sa.String(255), nullable=False),
        sa.Column("size", sa.String(16), nullable=False, server_default="XSMALL"),
    )


def downgrade() -> None:
    op.drop_table("snowflake_plugin_warehouses")
