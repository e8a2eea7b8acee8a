"""Reliability tools: the live datagram fuzzer (tools/fuzz) and the soak test (tools/soak)."""
