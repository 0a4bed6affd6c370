"""The scheduler: ASGI app, WebSocket handlers, dispatcher service and HTTP API."""
