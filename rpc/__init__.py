"""Devices: their profiles, how to build and link for them, the emulated phone, the RPC
tracker and servers, and bounded sessions on them. Nothing here knows the model or the
pipeline."""

from pathlib import Path

# Where the RPC processes' records and the emulator live (each movable by its variable).
CACHE = Path(__file__).resolve().parents[1] / ".cache"
