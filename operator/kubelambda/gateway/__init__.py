"""The gateway: the Lambda Invoke API and API Gateway HTTP APIs in front of function pods.

Run as ``python -m kubelambda.gateway [--kubeconfig PATH]``. One asyncio loop on uvloop, an
``httptools`` HTTP/1.1 server (no framework), one pooled keep-alive client to the pods' agents.
Routing state (Functions, Aliases, ApiRoutes, ready pod addresses from EndpointSlices labelled
``app.kubernetes.io/managed-by=kubelambda``, all namespaces) lives in memory, fed by watches;
ApiRoutes are validated and compiled into plain tables when they arrive. No request makes an
API call, except the first use (then every 30 s) of an API key Secret.

Environment:

=======================================  ========================================================
KUBELAMBDA_GATEWAY_PORT                  HTTP port (0.0.0.0), default 8080
KUBELAMBDA_GATEWAY_METRICS_PORT          Prometheus ``/metrics`` port, default 9090
KUBELAMBDA_GATEWAY_DEFAULT_NAMESPACE     namespace of the un-prefixed Invoke API and of the
                                         HTTP API served at the root, default ``default``
KUBELAMBDA_GATEWAY_DEFAULT_API           the HTTP API served at the root, default ``default``
KUBELAMBDA_GATEWAY_API_DOMAIN            when set (e.g. ``apis.example.com``), a request for
                                         host ``<api>.<namespace>.apis.example.com`` goes to
                                         that HTTP API, its path unchanged; default unset
KUBELAMBDA_GATEWAY_MAX_CONCURRENCY       platform-wide concurrent invocations, default 1000
KUBELAMBDA_GATEWAY_QUEUE_LENGTH          invocations waiting for a busy or not yet ready pod,
                                         per function version, default 100
KUBELAMBDA_GATEWAY_COLD_START_SECONDS    how long an invocation is held while its version has
                                         no ready pod (scale from zero), default 30
KUBELAMBDA_GATEWAY_TIMEOUT_GRACE_SECONDS added to the function timeout on the pod call,
                                         default 2 (the agent enforces the timeout itself)
KUBELAMBDA_GATEWAY_MAX_CONNECTIONS       client connections; more are closed at once, default
                                         10000
KUBELAMBDA_GATEWAY_DRAIN_DELAY_SECONDS   on SIGTERM, time between turning unready and closing
                                         the listener, default 0 (set a few seconds in a
                                         cluster so endpoints catch up)
KUBELAMBDA_GATEWAY_LOG_LEVEL             default INFO
KUBELAMBDA_GATEWAY_SIGV4                 ``namespaces`` (default): verify SigV4 where a namespace
                                         holds access keys; ``required``: everywhere (no keys, no
                                         call); ``off``
KUBELAMBDA_GATEWAY_INTERNAL_TOKEN        what the platform's own callers (the invoker) present
                                         in ``X-Kubelambda-Internal-Token`` instead of a signature
AWS_REGION                               region in ARNs, default ``us-east-1``
KUBERNETES_SERVICE_HOST/PORT             in-cluster API server (service account token and CA
                                         from /var/run/secrets/kubernetes.io/serviceaccount);
                                         else ``--kubeconfig`` / ``KUBECONFIG``
=======================================  ========================================================

Endpoints (main port):

``POST /2015-03-31/functions/<FunctionName>/invocations[?Qualifier=Q]`` - the Lambda Invoke API
for functions in the default namespace. ``FunctionName`` is a name, ``name:qualifier``, a
partial (``000000000000:function:name[:q]``) or full ARN
(``arn:aws:lambda:<region>:<account>:function:name[:q]``), percent-encoded or not. The qualifier
is ``$LATEST``, a published version or an alias (weighted between its two versions; the one
that ran is in ``X-Amz-Executed-Version``); one in the name and another in the query is a 400.
``X-Amz-Invocation-Type``: ``RequestResponse`` (relayed to a pod's agent), ``Event`` (handed to
the async publisher, 202; 501 ``ServiceException`` while none is configured), ``DryRun`` (204).
``X-Amz-Log-Type``, ``X-Amz-Client-Context`` and ``X-Amzn-Trace-Id`` reach the function.
SigV4: a namespace holding Secret ``kubelambda-access-keys`` (access key id -> secret access
key) accepts only calls signed with one of its keys; 403 ``MissingAuthenticationTokenException``
/ ``UnrecognizedClientException`` / ``InvalidSignatureException`` otherwise (``access.py``).

``POST /namespaces/<namespace>/2015-03-31/functions/<FunctionName>/invocations`` - the same for
any namespace. AWS SDKs reach it unchanged by putting the prefix in the endpoint URL, e.g.
``boto3.client("lambda", endpoint_url="http://gateway:8080/namespaces/team-a")``.

Service errors are Lambda's: ``x-amzn-ErrorType`` and ``{"Type", "message"[, "Reason"]}``:
404 ResourceNotFoundException, 400 InvalidRequestContentException (body not JSON) /
InvalidParameterValueException / ValidationException, 413 RequestEntityTooLargeException
(6291456 bytes sync, 262144 Event), 429 TooManyRequestsException with Reason
ReservedFunctionConcurrentInvocationLimitExceeded (reserved concurrency, 0 throttles all),
ConcurrentInvocationLimitExceeded (platform limit) or FunctionInvocationRateLimitExceeded (every
pod busy and the wait queue full or timed out), 502 ResourceNotReadyException (no pod became
ready in time) / ServiceException (the pod failed or did not answer within timeout + grace).

Any other request is an HTTP API request (API Gateway HTTP API semantics, routes from
``ApiRoute`` objects):

- ``/apis/<namespace>/<api>/<path>`` - the API ``<api>`` (``spec.api``) of ``<namespace>``;
  the prefix is stripped, ``rawPath`` is ``/<path>``.
- with ``KUBELAMBDA_GATEWAY_API_DOMAIN`` set, a ``Host`` of ``<api>.<namespace>.<domain>``.
- anything else - the default API (``KUBELAMBDA_GATEWAY_DEFAULT_API`` in the default
  namespace), path as sent. The Invoke API paths, ``/healthz``, ``/readyz`` and ``/apis/...``
  are therefore never routes of the default API.

Routes match as API Gateway's do (``apiroutes``); a function integration gets the payload
format 2.0 or 1.0 event (``apievents``) through the Invoke API's path (concurrency caps, pod
choice, cold-start hold) within the route's ``timeoutMillis``; an HTTP integration is proxied
(the greedy parameter's value, else the whole path, appended to ``target.http.url``). CORS
preflights are answered by the gateway (``cors``); ``throttling`` is a token bucket per route
and gateway replica; auth is ``API_KEY`` (``x-api-key`` against a Secret's values, with an
optional usage plan per key: throttle and a quota counted in JetStream, ``usage``),
``JWT`` (RSA, ``jwtauth``) or ``FUNCTION`` (a Lambda authorizer, simple responses, cached per
identity). Errors are API Gateway's ``{"message": ...}``, every answer has ``apigw-requestid``: 404
Not Found (no API or route), 401 Unauthorized (no or bad JWT, missing identity source), 403
Forbidden (bad API key, authorizer said no), 413 Request Entity Too Large (body over 10 MB, or an
event over Lambda's 6 MB), 429 Too Many Requests (route or key throttling, function concurrency
limits), 429 Limit Exceeded (the key's quota), 500 Internal Server Error (the target or authorizer
function does not exist, the authorizer failed), 502 Internal Server Error (the function failed or
returned an invalid response, the pod or HTTP backend failed), 503 Service Unavailable (no pod
became ready in time, a quota that NATS cannot count now), 504 Endpoint request timed out.

``GET /healthz`` - 200 while the process serves. ``GET /readyz`` - 200 once the first list of
every watched kind is in, 503 before and while shutting down.

Metrics port: ``GET /metrics`` (``kubelambda_gateway_*``: invocations, errors, throttles,
duration, in-flight and queued per namespace/function/version).

SIGTERM: turn unready, wait the drain delay, stop accepting, finish in-flight invocations, exit.

The API server permissions it needs: get, list and watch on ``functions.kubelambda.io``,
``aliases.kubelambda.io``, ``apiroutes.kubelambda.io`` and
``endpointslices.discovery.k8s.io``, cluster-wide; get on ``secrets`` (the API key Secrets
that ApiRoutes name, read one by one, never listed).
"""
