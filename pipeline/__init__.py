"""ppmseg's pipeline: the stages that take PP-MobileSeg from PyTorch to a tuned library.

One sub-package per stage; data flows down this list and a package imports only those
below it: ``cli`` (the commands), ``bench`` and ``evaluate`` (benchmarks against peers,
mIoU), ``tune`` (the tuning job), ``deploy`` (runtimes, remote runs, bundles), ``compile``
(import, passes, output tail, build, artifact), ``common`` (paths, files, inputs, outputs).
"""
