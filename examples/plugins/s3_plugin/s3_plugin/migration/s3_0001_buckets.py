"""s3_plugin: buckets

Revision ID: s3_0001
Revises:
Create Date: 2026-01-20 09:00:00.000000

The first revision of the plugin's own branch ("s3_plugin"); it needs the core's
data_products table, hence depends_on core_0002.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "s3_0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = ("s3_plugin",)
depends_on: Union[str, Sequence[str], None] = "core_0002"


def upgrade() -> None:
    op.create_table(
        "s3_plugin_buckets",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "data_product_id",
            sa.Integer(),
            sa.ForeignKey("data_products.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("bucket", sa.String(63), nullable=False),
        sa.Column("prefix", sa.String(1024), nullable=False, server_default=""),
        sa.Column("region", sa.String(32), nullable=False, server_default="eu-west-1"),
    )


def downgrade() -> None:
    op.drop_table("s3_plugin_buckets")
