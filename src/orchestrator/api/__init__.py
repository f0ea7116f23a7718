"""The HTTP API served by orch serve: routes, reads and formats, the request guard and
limits, live streams, logs, metrics, pagination, and the cost and status reports (which
the CLI and the dashboard show too).
"""
