"""CLI layer: the `evsite` command for the service and for technicians."""
