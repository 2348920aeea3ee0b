"""Kubernetes: the JobSet a task becomes (pure rendering); submission comes with launch."""
