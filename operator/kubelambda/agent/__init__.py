"""The function-pod agent: container entrypoint of every function pod.

Run as ``python3 -m kubelambda.agent``. It starts ``KUBELAMBDA_CONCURRENCY`` language runtime
processes, serves each the Lambda Runtime API on 127.0.0.1, and serves the gateway an invoke
endpoint. Standard library plus uvloop, which the runtime images ship beside it (without it,
asyncio's own loop serves; see ``eventloop.py``); one event loop. In external mode it starts
no runtime: the runtime is another container of the pod (see ``external.py``).

Environment (set by the operator):

==================================  ==========================================================
AWS_LAMBDA_FUNCTION_NAME            function name (required)
AWS_LAMBDA_FUNCTION_VERSION         executed version, default ``$LATEST``
AWS_LAMBDA_FUNCTION_MEMORY_SIZE     MB, default 128 (REPORT lines, memory cap, OOM detection)
_HANDLER                            handler string, passed to the runtime
AWS_REGION                          default ``us-east-1``
AWS_LAMBDA_INITIALIZATION_TYPE      passed through, default ``on-demand``
KUBELAMBDA_RUNTIME                  ``python3.11`` | ``nodejs18`` | ``provided`` | ``image``
                                    (``python3*``, ``nodejs*``, ``provided*`` prefixes accepted)
                                    | ``external``: the runtime is the entrypoint of another
                                    container of the pod, which must share its PID namespace
                                    and UID with the agent; concurrency 1
KUBELAMBDA_RUNTIME_COMMAND          explicit runtime argv (JSON list or shell-split string),
                                    meant for ``image``; overrides the default command
KUBELAMBDA_RUNTIME_DIR              runtime bootstraps, default ``/opt/kubelambda/runtime``
KUBELAMBDA_TASK_ROOT                function code, default ``/var/task``
KUBELAMBDA_TIMEOUT_SECONDS          invocation timeout, default 3
KUBELAMBDA_CONCURRENCY              runtime processes (parallel invocations), default 1
KUBELAMBDA_FUNCTION_ARN             default ``arn:aws:lambda:<region>:000000000000:function:<name>``
KUBELAMBDA_INVOKE_PORT              invoke endpoint on 0.0.0.0, default 8080
KUBELAMBDA_RUNTIME_API_PORT         runtime i is served on 127.0.0.1:<port + i>, default 9001
KUBELAMBDA_ENFORCE_MEMORY           ``1`` (default): SIGKILL a runtime whose RSS exceeds the
                                    memory size (``Runtime.OutOfMemory``); ``0`` for local
                                    development
KUBELAMBDA_PROC_ROOT                external mode: where the runtime's processes are found,
                                    default ``/proc`` (tests inject a tree of their own)
KUBELAMBDA_POOL_TOKEN               warm-pool mode: start with no function, wait for
                                    ``POST /v1/specialize`` with this bearer token (see
                                    ``agent/pool.py``)
KUBELAMBDA_POOL_DIR                 warm-pool mode: the only directory a specialisation may
                                    unpack into (and empty)
KUBELAMBDA_AGENT_LOOP               not set by the operator: ``uvloop`` (default, when
                                    importable) or ``asyncio``
==================================  ==========================================================

Runtime commands: python -> ``python3 $KUBELAMBDA_RUNTIME_DIR/bootstrap.py``; nodejs ->
``node $KUBELAMBDA_RUNTIME_DIR/bootstrap.js``; provided -> the first executable of
``$KUBELAMBDA_TASK_ROOT/bootstrap``, ``/opt/bootstrap``; image without a command -> the same,
then ``/var/runtime/bootstrap`` (AWS base images). A missing one is reported per invocation
as ``Runtime.InvalidEntrypoint``. Runtimes get Lambda's environment; the function's own
variables pass through, ``KUBELAMBDA_*`` ones do not, nor does the agent's own directory on
``PYTHONPATH`` (unless the function's variables set ``PYTHONPATH``).

Memory: the container's limit is above the memory size (a tmpfs /tmp is charged to it), so
the agent enforces the memory size itself by sampling the runtime's RSS (which does not count
files in /tmp) while it initializes or runs an invocation.

Invoke endpoint (0.0.0.0:``KUBELAMBDA_INVOKE_PORT``):

``POST /2015-03-31/functions/<any>/invocations`` - body is the event. Request headers:
``X-Amz-Log-Type: Tail``, ``X-Amz-Client-Context`` (base64 JSON), ``X-Amzn-Trace-Id``,
``X-Kubelambda-Request-Id`` (else a uuid4), ``X-Kubelambda-Invoked-Arn`` (else the function
ARN), ``X-Kubelambda-Deadline-Ms`` (epoch ms; else timeout from when the runtime takes the
event), ``X-Kubelambda-Cognito-Identity`` (JSON, passed to the runtime as is).
Answers 200 with the function's bytes and ``X-Amz-Executed-Version``, ``x-amzn-RequestId``,
``X-Amz-Function-Error: Unhandled`` for function and platform errors (``Sandbox.Timedout``,
``Runtime.ExitError``, ``Runtime.OutOfMemory``, ``Function.ResponseSizeTooLarge``, init errors),
``X-Amz-Log-Result`` for Tail. Service errors carry ``x-amzn-ErrorType``: 429
``TooManyRequestsException`` when every runtime is busy, 413 ``RequestEntityTooLargeException``,
400 ``InvalidRequestContentException``, 503 ``ServiceException`` while shutting down.

``GET /healthz`` - 200 once every runtime finished its first init (or failed it: invocations
then return the init error, like Lambda), 503 before and while shutting down. In external
mode: once the runtime first called ``/runtime/invocation/next`` or ``/runtime/init/error``.

SIGTERM: stop accepting, finish in-flight invocations, stop the runtimes (not an external
one: the kubelet stops its container), exit.
"""
