"""Telemetry kept in Redis: task events and worker heartbeats, empty retrievals, queue-depth history."""
