"""The project's version string (reported by /health and the OpenAPI document)."""

__version__ = "0.1.0"
