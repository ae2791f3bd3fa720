"""Traces: the task-trace format and its readers and writer, synthetic workloads, CSV import."""
