"""The dev loop and how it runs: the step graph and its scheduling, re-runs, shards, the
affected-only selection and its coverage map, the history of outcomes, the busy processes of
--under-load, the machine line, and the run id on every result.
"""
