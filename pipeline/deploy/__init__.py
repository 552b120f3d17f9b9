"""Running compiled artifacts: the Python runtime (``runtime``), runs and timings on a device
through its tracker (``remote``), self-contained bundles for a device (``bundle``) and the
native C++ runner they carry (``native``)."""
