"""HTTP answers shared by local serving and the peer relay: header names, ranges, OCI errors."""
