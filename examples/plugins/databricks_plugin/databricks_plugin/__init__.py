"""Example plugin: Databricks workspaces as technical assets of a data product.

Unlike the S3 and Snowflake examples, whose revisions chain onto the portal's, this
plugin brings its own Alembic environment (``migrations/``), with its own version
table: its schema history is independent of the portal's and of other plugins'.
"""

__version__ = "1.0.0"
