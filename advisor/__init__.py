"""advisor: decides which gpu_lock settings to roll out, and how."""
