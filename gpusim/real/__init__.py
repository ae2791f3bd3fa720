"""The real parts: a private redis-server (server), a real client of the lock protocol
(lock_client), Redis CPU calibration (calibrate), the threaded real replay (replay), the
real-vs-simulated comparison table (comparison; its statistics live in gpusim.stats; it totals
per-task outcomes, task_outcomes, over the trace's regeneration cycles, cycles), and the
validation that ties them together (validate)."""
