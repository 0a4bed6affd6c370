"""Sans-I/O core: job state machine, selection, reservation rules, ordering. No I/O, no clock."""
