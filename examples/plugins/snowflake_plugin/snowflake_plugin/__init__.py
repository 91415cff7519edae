"""Example plugin: Snowflake warehouses as technical assets of a data product."""

__version__ = "1.0.0"
