"""Notifications delivered at least once from the outbox: the delivery loop, the notifier
and the forge status sync.
"""
