"""The operators' services: what ``minalesh-workers`` commands and the ops API both run."""
