"""portal-boot: the entrypoint that boots a plugin-extensible ASGI backend in a container."""

__version__ = "0.1.0"
