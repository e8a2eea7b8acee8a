"""Scripts of the built-in demo config (run by path, not imported)."""
