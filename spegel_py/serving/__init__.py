"""Local serving: the OCI distribution pull API over this node's own content store.

A miss goes to whatever implements :class:`spegel_py.serving.seam.MissHandler` (the relay, in
``app.py``); nothing here imports the relay.
"""
