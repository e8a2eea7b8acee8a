"""The device side: aiocoap resources around the sans-I/O core, on a DTLS transport."""
