"""Side effects that must never run twice: the transition lease, the effect journal, and
the merge and deploy themselves.
"""
