"""One module per command, each its pipeline's steps top to bottom: select, run, generate, filter, mine,
validate, and the outputs they write."""
