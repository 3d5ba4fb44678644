"""Processing steps: each a small pure function from ``Work`` to ``Work``, one concern per module.

``imgflow.worker.pipeline`` lists them in the order they run.
"""
