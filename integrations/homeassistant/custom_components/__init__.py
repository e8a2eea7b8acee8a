"""Home Assistant custom integrations shipped with coapdev (copy ``coapdev/`` from here)."""
