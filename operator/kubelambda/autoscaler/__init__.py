"""Scale decisions for function versions: demand reports from the gateways in, replicas out.

Pure parts (``policy``, ``scaler``) plus the HTTP endpoint gateways talk to (``server``); the
operator process runs it and applies the decisions to Deployments.
"""
