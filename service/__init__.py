"""Real-time fraud scoring: nginx → gunicorn → Falcon over a memory-mapped random forest."""

from importlib.metadata import version

# pyproject.toml's, as installed (make install, the image): written there only.
__version__ = version("fraud-scoring")
