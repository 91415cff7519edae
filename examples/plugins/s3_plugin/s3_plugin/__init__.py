"""Example plugin: S3 buckets as technical assets of a data product."""

__version__ = "1.0.0"
