"""The ``/debug/web`` page and the outcome recording behind it; only ``app.py`` imports this."""
