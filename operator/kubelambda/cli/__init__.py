"""The ``kubelambda`` command: deploy, invoke and manage functions from a laptop or CI.

It talks to the cluster with the kubeconfig's credentials only: Functions, Aliases and
ApiRoutes through the Kubernetes API, the platform's services (gateway, code store, invoker
admin API) through the API server (``http``). ``kubelambda --help`` lists the commands and the
exit codes scripts can rely on. The CLI imports nothing of the operator or the data plane
but the API models, which validate what it applies before the API server sees it.
"""
