"""The wire layer: client protocol (thrift IDL), framing and the JSON mapping.

Pure functions and sans-IO state machines only; no sockets here.
"""
