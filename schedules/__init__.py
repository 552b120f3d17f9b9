"""Schedules for every kernel, hand-written or searched (issue: compiler pipeline)."""
