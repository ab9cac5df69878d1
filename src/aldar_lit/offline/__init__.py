"""Offline stand-ins for the hub: a tiny SDXL with random weights (and the full architecture's configs), tiny
IP-Adapter and ControlNet weights, and a drawn demo character. Tests, the quickstart and benchmarks run on them."""
