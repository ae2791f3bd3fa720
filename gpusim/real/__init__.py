"""The real parts: a private redis-server, a real client of the lock protocol, Redis CPU
calibration, and the validation of the model against real replays."""
