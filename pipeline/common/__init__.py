"""What every stage shares: the project's paths, atomic files and locks, the two kinds of
model input and the outputs written from label maps, TVM log filtering, and the process's memory."""
