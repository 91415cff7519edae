"""databricks_plugin: baseline (workspaces)

Revision ID: databricks_0001
Revises:
Create Date: 2026-02-10 09:00:00.000000

The first revision of the plugin's own history (its own environment and version
table): it cannot name the portal's revisions, so it holds no foreign key into the
portal's tables (portal-boot runs it after the portal's migrations, but a history of
its own cannot declare that).
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "databricks_0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "databricks_plugin_workspaces",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("data_product_id", sa.Integer(), nullable=False, index=True),
        sa.Column("workspace_url", sa.String(255), nullable=False),
        sa.Column("catalog", sa.String(255), nullable=False, server_default="main"),
        sa.Column("schema", sa.String(255), nullable=False, server_default="default"),
    )


def downgrade() -> None:
    op.drop_table("databricks_plugin_workspaces")
