"""The gateway: client listeners (TCP, WebSocket) and per-connection sessions."""
