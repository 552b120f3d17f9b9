"""PP-MobileSeg in plain PyTorch (no TVM needed to import or test it)."""
