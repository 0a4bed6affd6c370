"""The node sockets held by this instance: register, heartbeat, gone, sweep, send."""
