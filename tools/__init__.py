"""Typed tools that do real work, one per module: each has an ``Args`` model, a ``Result`` model
and one function. Tools know nothing of agents; agents wrap them for the LLM."""
