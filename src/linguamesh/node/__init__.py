"""The node agent: connection, job runner, pipeline."""
