"""s3_plugin: bucket versioning flag

Revision ID: s3_0002
Revises: s3_0001
Create Date: 2026-02-03 09:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "s3_0002"
down_revision: Union[str, Sequence[str], None] = "s3_0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column(
        "s3_plugin_buckets",
        sa.Column("versioning_enabled", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    # Batch mode: SQLite cannot drop a column in place; on PostgreSQL it is a plain ALTER.
    with op.batch_alter_table("s3_plugin_buckets") as batch:
        batch.drop_column("versioning_enabled")
