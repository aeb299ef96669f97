"""Project tasks: ``python -m xtask <step>`` (schema regeneration, benchmarks)."""
