"""Agent configuration, read once from the environment the operator sets on the pod."""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_TASK_ROOT = "/var/task"
DEFAULT_RUNTIME_DIR = "/opt/kubelambda/runtime"
LAMBDA_PATH = ("/var/lang/bin", "/usr/local/bin", "/usr/bin", "/bin", "/opt/bin")
INTERNAL_PREFIX = "KUBELAMBDA_"
EXTERNAL = "external"
# Set in warm-pool pods: the agent waits to be given a function (see ``pool.py``).
POOL_TOKEN_ENV = "KUBELAMBDA_POOL_TOKEN"
# Where the agent's own package lives (/var/runtime/lib in the runtime images): on the
# agent's PYTHONPATH, but function code must not be able to import the agent.
AGENT_LIB_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ConfigError(ValueError):
    """The agent cannot start with this environment."""


@dataclass(frozen=True)
class Announcement:
    url: str
    """The autoscaler's base URL (http://host:port)."""
    token: str
    """Proves the pod's function identity (an HMAC the operator computed)."""
    namespace: str
    pod_ip: str


@dataclass(frozen=True, slots=True)
class AgentConfig:
    function_name: str
    version: str
    memory_mb: int
    handler: str
    region: str
    timeout_s: float
    concurrency: int
    runtime: str
    command: tuple[str, ...]
    function_arn: str
    invoke_port: int
    runtime_api_port: int
    initialization_type: str
    task_root: str
    runtime_dir: str
    runtime_env: Mapping[str, str]
    """Environment of every runtime process, minus the per-process variables."""
    bootstrap_candidates: tuple[str, ...] = ()
    """Where the runtime executable was looked up (custom runtimes), for the error message."""
    enforce_memory: bool = True
    """SIGKILL a runtime whose RSS exceeds ``memory_mb`` (the container limit is larger)."""
    proc_root: str = "/proc"
    """External mode: where the runtime's processes are looked up (a test injects its own)."""
    announce: Announcement | None = None
    """Whom to tell that this instance is ready, before the kubelet's probe does."""

    @property
    def external(self) -> bool:
        return self.runtime == EXTERNAL


def bootstrap_candidates(runtime: str, task_root: str) -> tuple[str, ...]:
    """Where a custom runtime's executable is looked up, in Lambda's order. An image
    without an explicit command also tries /var/runtime/bootstrap, the runtime entrypoint
    of AWS's base images (it reads the handler from _HANDLER)."""
    if runtime.startswith("provided"):
        return (os.path.join(task_root, "bootstrap"), "/opt/bootstrap")
    if runtime == "image":
        return (os.path.join(task_root, "bootstrap"), "/opt/bootstrap", "/var/runtime/bootstrap")
    return ()


def _int(environ: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = environ.get(name, "")
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 0 or 1, got {raw!r}")


def _timeout(environ: Mapping[str, str]) -> float:
    raw = environ.get("KUBELAMBDA_TIMEOUT_SECONDS", "")
    try:
        value = float(raw) if raw else 3.0
    except ValueError:
        raise ConfigError(f"KUBELAMBDA_TIMEOUT_SECONDS must be a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError("KUBELAMBDA_TIMEOUT_SECONDS must be positive")
    return value


def parse_command(raw: str) -> tuple[str, ...]:
    """A JSON list of strings, or a shell-style string."""
    if raw.lstrip().startswith("["):
        try:
            argv = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"KUBELAMBDA_RUNTIME_COMMAND is not valid JSON: {exc}") from None
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ConfigError("KUBELAMBDA_RUNTIME_COMMAND must be a JSON list of strings")
        command = tuple(argv)
    else:
        command = tuple(shlex.split(raw))
    if not command:
        raise ConfigError("KUBELAMBDA_RUNTIME_COMMAND is empty")
    return command


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def runtime_command(
    runtime: str, explicit: str, runtime_dir: str, candidates: tuple[str, ...]
) -> tuple[str, ...]:
    if runtime == EXTERNAL:
        return ()  # the runtime is another container's entrypoint
    if explicit.strip():
        return parse_command(explicit)
    if runtime.startswith("python3"):
        return ("python3", os.path.join(runtime_dir, "bootstrap.py"))
    if runtime.startswith("nodejs"):
        return ("node", os.path.join(runtime_dir, "bootstrap.js"))
    if candidates:
        # A missing bootstrap is reported per invocation (Runtime.InvalidEntrypoint), as
        # Lambda does, rather than crash-looping the pod.
        found = [c for c in candidates if _is_executable(c)]
        return (found[0] if found else candidates[0],)
    raise ConfigError(f"unsupported KUBELAMBDA_RUNTIME {runtime!r}")


def execution_env(runtime: str) -> str | None:
    """AWS_EXECUTION_ENV as Lambda sets it for managed runtimes (not provided / image)."""
    if runtime.startswith("python3"):
        return f"AWS_Lambda_{runtime}"
    if runtime.startswith("nodejs"):
        return f"AWS_Lambda_{runtime}" if runtime.endswith(".x") else f"AWS_Lambda_{runtime}.x"
    return None


def _without_agent_lib(inherited: str, agent_lib: str) -> str:
    """The image's PYTHONPATH (the agent's lib dir alone) is the agent's, not the function's.
    A PYTHONPATH set by the function's variables (anything else) passes through as is."""
    entries = [p for p in inherited.split(":") if p]
    if entries and all(os.path.realpath(p) == os.path.realpath(agent_lib) for p in entries):
        return ""
    return inherited


def _merge_paths(lambda_entries: list[str], inherited: str, inherited_first: bool) -> str:
    own = [p for p in inherited.split(":") if p]
    first, second = (own, lambda_entries) if inherited_first else (lambda_entries, own)
    return ":".join(first + [p for p in second if p not in first])


def build_runtime_env(
    environ: Mapping[str, str],
    *,
    runtime: str,
    function_name: str,
    version: str,
    memory_mb: int,
    handler: str,
    region: str,
    initialization_type: str,
    task_root: str,
    runtime_dir: str,
    agent_lib: str = AGENT_LIB_DIR,
) -> dict[str, str]:
    """The Lambda environment: function variables pass through, agent ones do not."""
    env = {k: v for k, v in environ.items() if not k.startswith(INTERNAL_PREFIX)}
    inherited = dict(environ)
    inherited["PYTHONPATH"] = _without_agent_lib(environ.get("PYTHONPATH", ""), agent_lib)
    # Image functions keep their own search paths first (venvs, custom interpreters);
    # managed runtimes get Lambda's order.
    image = runtime == "image"
    paths = {
        "PATH": list(LAMBDA_PATH),
        "LD_LIBRARY_PATH": [
            "/var/lang/lib",
            "/lib64",
            "/usr/lib64",
            runtime_dir,
            f"{runtime_dir}/lib",
            task_root,
            f"{task_root}/lib",
            "/opt/lib",
        ],
        "NODE_PATH": [
            "/opt/nodejs/node18/node_modules",
            "/opt/nodejs/node_modules",
            f"{runtime_dir}/node_modules",
            runtime_dir,
            task_root,
        ],
        "PYTHONPATH": [task_root, "/opt/python", "/opt/python/lib/python3.11/site-packages"],
    }
    for name, entries in paths.items():
        env[name] = _merge_paths(entries, inherited.get(name, ""), inherited_first=image)
    env.update(
        {
            "_HANDLER": handler,
            "LAMBDA_TASK_ROOT": task_root,
            "LAMBDA_RUNTIME_DIR": runtime_dir,
            "AWS_LAMBDA_FUNCTION_NAME": function_name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": version,
            "AWS_LAMBDA_INITIALIZATION_TYPE": initialization_type,
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function_name}",
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
            "TZ": ":UTC",
            "LANG": "en_US.UTF-8",
        }
    )
    exec_env = execution_env(runtime)
    if exec_env is not None:
        env["AWS_EXECUTION_ENV"] = exec_env
    return env


def load_config(environ: Mapping[str, str]) -> AgentConfig:
    function_name = environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
    if not function_name:
        raise ConfigError("AWS_LAMBDA_FUNCTION_NAME is required")
    runtime = environ.get("KUBELAMBDA_RUNTIME", "")
    if not runtime:
        raise ConfigError("KUBELAMBDA_RUNTIME is required")
    region = environ.get("AWS_REGION") or "us-east-1"
    version = environ.get("AWS_LAMBDA_FUNCTION_VERSION") or "$LATEST"
    memory_mb = _int(environ, "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", 128, 1)
    handler = environ.get("_HANDLER", "")
    init_type = environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") or "on-demand"
    task_root = environ.get("KUBELAMBDA_TASK_ROOT") or DEFAULT_TASK_ROOT
    runtime_dir = environ.get("KUBELAMBDA_RUNTIME_DIR") or DEFAULT_RUNTIME_DIR
    explicit = environ.get("KUBELAMBDA_RUNTIME_COMMAND", "")
    candidates = () if explicit.strip() else bootstrap_candidates(runtime, task_root)
    command = runtime_command(runtime, explicit, runtime_dir, candidates)
    concurrency = _int(environ, "KUBELAMBDA_CONCURRENCY", 1, 1)
    if runtime == EXTERNAL and concurrency != 1:
        raise ConfigError("KUBELAMBDA_RUNTIME=external serves one runtime: concurrency must be 1")
    return AgentConfig(
        function_name=function_name,
        version=version,
        memory_mb=memory_mb,
        handler=handler,
        region=region,
        timeout_s=_timeout(environ),
        concurrency=concurrency,
        runtime=runtime,
        command=command,
        function_arn=environ.get("KUBELAMBDA_FUNCTION_ARN")
        or f"arn:aws:lambda:{region}:000000000000:function:{function_name}",
        invoke_port=_int(environ, "KUBELAMBDA_INVOKE_PORT", 8080, 0),
        runtime_api_port=_int(environ, "KUBELAMBDA_RUNTIME_API_PORT", 9001, 1),
        initialization_type=init_type,
        task_root=task_root,
        runtime_dir=runtime_dir,
        runtime_env=build_runtime_env(
            environ,
            runtime=runtime,
            function_name=function_name,
            version=version,
            memory_mb=memory_mb,
            handler=handler,
            region=region,
            initialization_type=init_type,
            task_root=task_root,
            runtime_dir=runtime_dir,
        ),
        bootstrap_candidates=candidates,
        enforce_memory=_flag(environ, "KUBELAMBDA_ENFORCE_MEMORY", True),
        proc_root=environ.get("KUBELAMBDA_PROC_ROOT") or "/proc",
        announce=_announcement(environ),
    )


def _announcement(environ: Mapping[str, str]) -> Announcement | None:
    names = ("KUBELAMBDA_ANNOUNCE_URL", "KUBELAMBDA_ANNOUNCE_TOKEN", "KUBELAMBDA_NAMESPACE")
    url, token, namespace = (environ.get(name, "") for name in names)
    pod_ip = environ.get("KUBELAMBDA_POD_IP", "")
    if not (url and token and namespace and pod_ip):
        return None
    if not url.startswith("http://"):
        raise ConfigError(f"KUBELAMBDA_ANNOUNCE_URL must be an http:// URL, got {url!r}")
    return Announcement(url.rstrip("/"), token, namespace, pod_ip)
