"""The kopf operator: thin handlers that load models, call resources/ builders and apply."""
