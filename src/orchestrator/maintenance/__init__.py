"""Maintenance services as named loops under one supervisor: reaper, reconciler, janitor,
inbox, outbox and heartbeat.
"""
