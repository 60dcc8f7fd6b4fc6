"""The invoker: runs asynchronous (Event) invocations from the NATS JetStream queue.

Run as ``python -m kubelambda.invoker [--kubeconfig PATH | --functions FILE]``. The gateway
stores each Event invocation in the ``KUBELAMBDA_EVENTS`` stream before answering 202
(``kubelambda.gateway.publisher_nats``); the invoker pulls them through one durable consumer
per function (shared by all replicas: each event goes to one replica at a time), runs each by
calling the gateway's Invoke API synchronously, and settles it as Lambda does (``core``):
retries after function errors (``maximumRetryAttempts``, 1 min then 2 min apart), backoff
after throttles and platform errors until ``maximumEventAgeSeconds``, OnSuccess / OnFailure
destinations with Lambda's invocation record, and the ``KUBELAMBDA_DLQ`` stream for failures
without an OnFailure destination. An event is acked only once its outcome is stored, so a
crash means a duplicate, never a loss. Per function, at most
``KUBELAMBDA_INVOKER_FUNCTION_CONCURRENCY`` events run at once on a replica, fewer when the
function's reserved concurrency is lower (reserved 0: failed at once with ErrorCode 429).
Functions' settings come from a list+watch of ``functions.kubelambda.io`` (``functions``), so
a change applies within a second.

Scheduled triggers (``spec.schedules``, ``scheduler``): at each fire time of an enabled
schedule the invoker queues an Event invocation in the same stream (so it is retried, expires
and reaches destinations like any other); every replica does, and JetStream keeps one (the
message id names the function uid, schedule and fire time). After an outage the most recent
missed fire time is fired once; older ones are skipped.

The invoker calls the gateway with ``X-Kubelambda-Request-Id: <the event's request id>``, so
the invocation runs (and logs) under the request id the caller got with its 202.

Environment:

==========================================  =====================================================
KUBELAMBDA_NATS_URL                         ``nats://host:4222`` (comma-separated for a
                                            cluster), default ``nats://127.0.0.1:4222``
KUBELAMBDA_NATS_REPLICAS                    stream replicas (3 on a 3-node JetStream cluster),
                                            default 1
KUBELAMBDA_NATS_EVENTS_MAX_AGE_SECONDS      events stream max age, default 86400 (at least
                                            21660: events must expire as EventAgeExceeded in
                                            the DLQ, not silently in the stream)
KUBELAMBDA_NATS_EVENTS_MAX_BYTES            events stream size; beyond it the gateway answers
                                            429, default -1 (unlimited: the volume's size)
KUBELAMBDA_NATS_DLQ_MAX_AGE_SECONDS         dead letters are kept this long, default 1209600
KUBELAMBDA_NATS_DLQ_MAX_BYTES               DLQ size, default -1
KUBELAMBDA_INVOKER_GATEWAY_URL              the gateway, default ``http://127.0.0.1:8080``
KUBELAMBDA_INVOKER_ADMIN_PORT               admin API and health, default 8081
KUBELAMBDA_INVOKER_ADMIN_TOKEN              bearer token of the DLQ admin API (unset: the API
                                            answers 503)
KUBELAMBDA_INVOKER_INTERNAL_TOKEN           sent to the gateway (``X-Kubelambda-Internal-Token``)
                                            instead of a SigV4 signature
KUBELAMBDA_INVOKER_METRICS_PORT             Prometheus ``/metrics``, default 9090
KUBELAMBDA_INVOKER_FUNCTION_CONCURRENCY     events of one function run at once per replica,
                                            default 64
KUBELAMBDA_INVOKER_RETRY_BASE_SECONDS       delay before the first retry after a function
                                            error, doubled for the second, default 60
KUBELAMBDA_INVOKER_THROTTLE_MIN_SECONDS     first backoff after a throttle / 5xx, default 1
KUBELAMBDA_INVOKER_THROTTLE_MAX_SECONDS     longest such backoff, default 300
KUBELAMBDA_INVOKER_INVOKE_GRACE_SECONDS     added to the function timeout for the gateway
                                            call (cold start, queueing), default 45
KUBELAMBDA_INVOKER_ACK_WAIT_SECONDS         redelivery after an invoker stops answering for an
                                            event (running events are kept alive), default 30
KUBELAMBDA_INVOKER_MAX_ACK_PENDING          events per function out at once (running or in
                                            backoff), default 10000
KUBELAMBDA_INVOKER_CONSUMER_INACTIVE_SECONDS  unused consumers are removed, default 3600
KUBELAMBDA_INVOKER_FETCH_WAIT_SECONDS       long-poll of one fetch, default 5
KUBELAMBDA_INVOKER_FUNCTIONS_REFRESH_SECONDS  period of matching workers to functions and
                                            stored events (Function changes apply at once),
                                            default 10
KUBELAMBDA_INVOKER_SAMPLE_INTERVAL_SECONDS  queue gauges period, default 15
KUBELAMBDA_INVOKER_DESTINATION_TIMEOUT_SECONDS  one destination call, default 10
KUBELAMBDA_INVOKER_SHUTDOWN_GRACE_SECONDS   on SIGTERM, time running events get, default 25
KUBELAMBDA_INVOKER_LOG_LEVEL                default INFO
AWS_REGION                                  region in ARNs of records, default ``us-east-1``
==========================================  =====================================================

Admin API (``KUBELAMBDA_INVOKER_ADMIN_PORT``); ``/dlq*`` needs
``Authorization: Bearer $KUBELAMBDA_INVOKER_ADMIN_TOKEN``:

``GET /healthz`` - 200 while the process runs. ``GET /readyz`` - 200 once NATS and the
Function list are in.

``GET /dlq?namespace=N&function=F&after=SEQ&limit=100`` - dead letters, oldest first:
``{"deadLetters": [{"sequence", "namespace", "function", "qualifier", "requestId",
"condition", "errorCode", "errorMessage", "attempts", "enqueuedTime", "failedTime",
"payloadBytes"}], "next": SEQ | null}`` (pass ``next`` as ``after`` for the next page).

``GET /dlq/summary`` - ``{"functions": [{"namespace", "function", "count"}], "total"}``.

``GET /dlq/<seq>`` - one dead letter with its ``payload`` (JSON; ``payloadBase64`` otherwise).

``DELETE /dlq/<seq>`` - remove one (204; 404 when absent).

``POST /dlq/<seq>/redrive`` - queue it again as a new event (same request id, no attempts,
a fresh maximum age), then remove it from the DLQ. ``POST /dlq/redrive?namespace=N&function=F
&limit=1000`` - the same for the oldest ``limit`` matching dead letters.

``POST /dlq/purge?namespace=N&function=F`` - remove the matching dead letters
(``all=true`` instead of filters for all of them): ``{"purged": n}``.

Metrics (``kubelambda_invoker_*``): deliveries by outcome, retries by reason, completed events
by condition and target, destination failures, queue latency, in-flight events, schedule fires
(queued / duplicate) and schedule failures; sampled from the streams: queue depth, oldest
event age, DLQ depth per function.

SIGTERM: stop fetching, give running events the shutdown grace, exit (events not settled by
then are delivered again after the ack wait).

The API server permissions it needs: list and watch on ``functions.kubelambda.io``,
cluster-wide.
"""
