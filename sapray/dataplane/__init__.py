"""The data plane: readers and shards of every input format, Ray Data stages, engine and teacher actors,
placement on the cluster, and the actor pools and sessions the jobs run them in.

It moves and transforms rows; it prints nothing (jobs show progress through their console).
"""
