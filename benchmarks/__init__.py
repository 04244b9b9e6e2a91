"""Benchmarks: `python -m benchmarks.NAME [flags]`, each printing one JSON object (BENCHMARKS.md)."""
