"""Compiling: the PyTorch model imported into Relax (``frontend``) with BatchNorm folded
(``fold``), its output tail (``tail``: VIM or plain interpolation), built for a target with
or without a tuning database (``build``), and written as ``model.so`` + ``meta.json``
(``artifact``)."""
