"""Shard planning: how many shards to cut the state into, and who sends how many.

``model`` (instances, plans, parsing), ``greedy`` (the fast, optimal solver),
``validate`` (independent plan checker) are pure; ``milp`` is the PuLP/CBC reference and
the only module here that imports pulp.
"""
