"""Core layer: the pure domain of evsite.

Nothing here does I/O, reads a clock or logs. Time arrives as arguments (a monotonic time in
seconds for staleness and rates, the site's local wall time for schedules); decisions leave as
values that carry their reasons, and the shell around the core logs and applies them.
"""
