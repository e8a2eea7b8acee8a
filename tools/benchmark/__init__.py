"""tools/bench: coapdev side by side with libcoap, stock aiocoap and a Python UDP echo.

See docs/performance.md for what is measured, how, and the latest results.
"""
