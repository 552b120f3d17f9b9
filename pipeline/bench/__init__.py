"""Benchmarks that write ``bench/results/``: PP-MobileSeg against its peers (``peers``, with
one worker process per engine: ``worker``, ``engines``; results: ``report``) and the fused
VIM kernel against its alternatives (``vim``)."""
