"""Peer-to-peer routing: who in the cluster holds a digest or a tag (a Kademlia DHT, or memory)."""
