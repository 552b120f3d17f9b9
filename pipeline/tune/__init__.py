"""The tuning job (``job``): its steps (``steps``), the work directory (``workdir``),
measurement on the device (``measure``), the latency profile by part of the network
(``parts``), signals and progress while MetaSchedule searches, and the report (``report``)."""
