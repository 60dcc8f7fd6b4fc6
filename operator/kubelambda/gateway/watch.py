"""What the gateway watches: Functions, Aliases, ApiRoutes and kubelambda's EndpointSlices.

``kubelambda.gateway.main`` runs one ``kubelambda.kubeapi.ResourceWatch`` per resource, all
namespaces, each feeding the routing table.
"""

from __future__ import annotations

from kubelambda.gateway.apiroutes import API_ROUTE
from kubelambda.gateway.routing import ALIAS, ENDPOINT_SLICE, FUNCTION
from kubelambda.kubeapi import WatchedResource
from kubelambda.resources.names import MANAGED_BY

RESOURCES = (
    WatchedResource(FUNCTION, "/apis/kubelambda.io/v1alpha1/functions"),
    WatchedResource(ALIAS, "/apis/kubelambda.io/v1alpha1/aliases"),
    WatchedResource(
        ENDPOINT_SLICE,
        "/apis/discovery.k8s.io/v1/endpointslices",
        ",".join(f"{k}={v}" for k, v in MANAGED_BY.items()),
    ),
    WatchedResource(API_ROUTE, "/apis/kubelambda.io/v1alpha1/apiroutes"),
)
