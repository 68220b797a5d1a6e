"""Pure computations: scoring requests, metrics, SAP contexts, answer checking, filters, the race, the
reduce step, exact order statistics, sampling plans and validation statistics.

Nothing here starts Ray, loads a model or reads a file: every function takes values and returns values,
so each is tested against hand-computed cases.
"""
