"""The scheduler's edge: the ASGI app, the pages and the HTTP API, the two WebSocket
handlers (``/ws/session``, ``/ws/node``), admission (connection limits, origins) and
who may do what (operator access, node credentials)."""
