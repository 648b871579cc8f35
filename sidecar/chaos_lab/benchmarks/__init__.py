"""Benchmarks behind ``chaos-train bench --scenario ...``; each returns one JSON-able dict."""
