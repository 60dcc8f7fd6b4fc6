"""Pure builders: kubelambda models in, Kubernetes object dicts out (no API calls, no clock)."""
