"""The benchmarks (`python -m xtask bench NAME`), each beside its baseline."""
