"""Device profiles, the RPC tracker and servers (issue: devices and RPC)."""
