"""Indices over descriptor sets larger than RAM: chosen under a memory budget, trained on a sample, filled in
streamed blocks (merged on disk when the index itself exceeds the budget), and tuned to a measured recall.

One reader (`source.open_source`) feeds every step, so the store format can change in one place.
"""
