"""Jobs in flight here: the runner (the only caller of the job lifecycle), the
dispatcher (the waiting queue, selection, reservation, assign or hand-over), the
job's run state, its spans and its result."""
