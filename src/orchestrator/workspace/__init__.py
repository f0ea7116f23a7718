"""A task's repository and worktree: git, worktrees, the commit policy, hooks, garbage
collection and the per-repository setup.
"""
