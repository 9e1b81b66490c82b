"""The peer relay: a local miss served from peers, hedged, resumed, verified and relayed.

:class:`spegel_py.relay.mirror.Mirror` is the entry point; nothing here imports local serving.
"""
