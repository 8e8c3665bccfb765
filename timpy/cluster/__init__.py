"""The cluster layer: membership, the hash ring, peer transport.

So far only the ring exists (issue 3 builds the rest); it is a pure data
structure shared by node ownership and, later, the backend map.
"""
