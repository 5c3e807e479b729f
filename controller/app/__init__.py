"""App layer: the composition root (supervisor, control loop, wiring from config, service I/O)."""
