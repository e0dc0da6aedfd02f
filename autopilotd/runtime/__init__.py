"""The runtime: one TaskGroup of services, one writer of the frozen Snapshot."""
