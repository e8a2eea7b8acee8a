"""coapdev-gateway: the program a device runs, bridging CoAP resources to local scripts."""
