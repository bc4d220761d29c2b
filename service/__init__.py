"""Real-time fraud scoring: nginx → gunicorn → Falcon over a memory-mapped random forest."""

__version__ = "1.0.0"
