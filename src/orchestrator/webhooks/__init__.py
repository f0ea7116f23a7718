"""Trackers' and forges' webhooks: intake and verification, the event vocabulary, the HTTP
routes and the inbox of deferred intents.
"""
