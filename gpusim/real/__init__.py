"""The real parts: a private redis-server (server), a real client of the lock protocol
(lock_client), Redis CPU calibration (calibrate), the threaded real replay (replay), the
real-vs-simulated comparison table (comparison; its statistics live in gpusim.stats), and the
validation that ties them together (validate)."""
