"""State stores: the StateStore contract, memory and Redis implementations."""
