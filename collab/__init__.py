"""collab: a self-hostable real-time collaboration server."""

__version__ = "0.1.0"
