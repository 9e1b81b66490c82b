"""The rollout benchmark (issue 12 item 4): ``python -m bench.rollout``; see ``__main__``."""
