"""Client sessions held by this instance: the session table (open, resume, linger,
close), each session's delivery (its pump into the history and onto the socket), the
intake that turns utterances into jobs, the streamed utterance, rooms and transcripts."""
