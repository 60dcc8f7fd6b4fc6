"""kubelambda: AWS-Lambda-compatible functions on Kubernetes."""
