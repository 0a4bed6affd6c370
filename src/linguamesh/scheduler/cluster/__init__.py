"""Other scheduler instances on the same Redis: the remote port (and the no-remote of
a single instance), the bridge that acts for other instances, membership (liveness,
inboxes, the sweeper) and relays of events into sessions held elsewhere."""
