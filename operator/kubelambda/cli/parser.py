"""The command line: argparse only, no side effects (unit tests parse freely)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from kubelambda.cli import aliases, dlq, functions, invoke, logs, routes
from kubelambda.cli.output import Format
from kubelambda.cli.session import Session

Command = Callable[[argparse.Namespace, Session], int]

DESCRIPTION = "Deploy, invoke and manage kubelambda functions on a Kubernetes cluster."
EPILOG = """\
exit codes:
  0    success
  1    the function returned an error, or the operation failed
  2    usage error: bad arguments, an invalid manifest or function spec
  3    not found: function, version, alias, route or dead letter
  4    timed out waiting (deploy, publish, invoke --timeout)
  130  interrupted

environment:
  KUBECONFIG                          the cluster (or --kubeconfig)
  KUBELAMBDA_RELEASE, KUBELAMBDA_RELEASE_NAMESPACE
                                      the platform's Helm release (kubelambda, kubelambda-system)
  KUBELAMBDA_GATEWAY_URL, KUBELAMBDA_STORE_URL, KUBELAMBDA_INVOKER_URL
                                      reach a service directly instead of through the API server
  KUBELAMBDA_STORE_TOKEN, KUBELAMBDA_INVOKER_TOKEN
                                      tokens instead of the release's Secrets

Services are reached through the Kubernetes API server with the kubeconfig's credentials
(the gateway by its service proxy, the code store and the invoker by a port-forward):
no port-forward to start, no ingress needed.
"""
ALIAS_COMMANDS = ("set", "list", "delete")


def global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options every command takes, before or after its name. On subcommands they default to
    SUPPRESS, so that an option given before the command name is not reset by the subparser."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("cluster and platform")
    group.add_argument(
        "-n",
        "--namespace",
        default=default(None),
        help="namespace of the functions (default: the kubeconfig context's)",
    )
    group.add_argument("--kubeconfig", default=default(None), help="kubeconfig file")
    group.add_argument("--context", default=default(None), help="kubeconfig context")
    group.add_argument(
        "--release",
        default=default(None),
        help="Helm release of the platform (default: kubelambda)",
    )
    group.add_argument(
        "--release-namespace",
        default=default(None),
        help="namespace of the platform (default: kubelambda-system)",
    )
    group.add_argument(
        "--gateway-url",
        default=default(None),
        help="call the gateway at this URL (env KUBELAMBDA_GATEWAY_URL)",
    )
    group.add_argument(
        "--store-url",
        default=default(None),
        help="call the code store at this URL (env KUBELAMBDA_STORE_URL)",
    )
    group.add_argument(
        "--invoker-url",
        default=default(None),
        help="call the invoker's admin API at this URL (env KUBELAMBDA_INVOKER_URL)",
    )
    group.add_argument(
        "-o",
        "--output",
        choices=[f.value for f in Format],
        default=default(None),
        help="output format of listings and status (default: table)",
    )


class Commands:
    """Adds subcommands that all share the global options and the exit-code epilog."""

    def __init__(self, parent: argparse.ArgumentParser, dest: str) -> None:
        self.subparsers = parent.add_subparsers(dest=dest, required=True, metavar="COMMAND")

    def add(self, name: str, run: Command | None, help_text: str) -> argparse.ArgumentParser:
        parser = self.subparsers.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if run is not None:
            global_options(parser, suppress=True)
            parser.set_defaults(run=run)
        return parser


def add_deploy(commands: Commands) -> None:
    parser = commands.add(
        "deploy",
        functions.run_deploy,
        "Zip and upload code, apply the Function, wait until it is Ready.",
    )
    parser.add_argument("path", metavar="DIR|ZIP", help="directory to zip, or a zip file")
    parser.add_argument("-f", "--file", help="Function manifest to start from (code is filled in)")
    parser.add_argument("--name", help="function name (default: the manifest's)")
    parser.add_argument("--runtime", help="python3.11, nodejs18 or provided")
    parser.add_argument("--handler", help="entry point, e.g. app.handler")
    parser.add_argument("--memory", type=int, metavar="MB", help="memory in MB (128-10240)")
    parser.add_argument(
        "--function-timeout", type=int, metavar="SECONDS", help="invocation timeout (1-900)"
    )
    parser.add_argument("--ephemeral-storage", type=int, metavar="MB", help="/tmp size in MB")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable (repeatable)",
    )
    parser.add_argument(
        "--layer",
        action="append",
        default=[],
        metavar="NAME:VERSION",
        help="layer version, in order (repeatable)",
    )
    parser.add_argument(
        "--publish",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="publish a version on every change",
    )
    parser.add_argument("--description", help="free text")
    add_wait(parser, 180.0, "Ready")


def add_wait(parser: argparse.ArgumentParser, default: float, what: str) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=default,
        metavar="SECONDS",
        help=f"how long to wait until {what} (default: {default:g}); exit 4 after",
    )
    parser.add_argument("--no-wait", action="store_true", help="do not wait")


def add_invoke(commands: Commands) -> None:
    parser = commands.add(
        "invoke",
        invoke.run_invoke,
        "Invoke a function and print its response (exit 1 on a function error).",
    )
    parser.add_argument("name", help="function name (or name:qualifier)")
    parser.add_argument("-q", "--qualifier", help="version or alias (default: $LATEST)")
    payload = parser.add_mutually_exclusive_group()
    payload.add_argument("-p", "--payload", metavar="JSON", help="the event")
    payload.add_argument(
        "--payload-file", metavar="FILE", help="the event from a file; - for stdin"
    )
    parser.add_argument(
        "--async",
        dest="async_",
        action="store_true",
        help="Event invocation: queue it, print the request id",
    )
    parser.add_argument(
        "--log-tail",
        action="store_true",
        help="print the last 4 KB of the invocation's log on stderr",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=invoke.DEFAULT_INVOKE_TIMEOUT_S,
        metavar="SECONDS",
        help="how long to wait for the response; exit 4 after",
    )


def add_logs(commands: Commands) -> None:
    parser = commands.add("logs", logs.run_logs, "Print the logs of a function version's pods.")
    parser.add_argument("name", help="function name")
    parser.add_argument("-q", "--qualifier", help="version or alias (default: $LATEST)")
    parser.add_argument("-f", "--follow", action="store_true", help="stream new lines and pods")
    parser.add_argument("--since", metavar="DURATION", help="only newer lines: 30s, 5m, 2h, 1d")
    parser.add_argument("--tail", type=int, metavar="LINES", help="last LINES lines of each pod")


def add_publish(commands: Commands) -> None:
    parser = commands.add(
        "publish", functions.run_publish, "Publish $LATEST as a numbered version; print its number."
    )
    parser.add_argument("name", help="function name")
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the operator (default: 60); exit 4 after",
    )


def add_status(commands: Commands) -> None:
    parser = commands.add(
        "status",
        functions.run_status,
        "Functions: Ready, versions, replicas, last scale reason, URL.",
    )
    parser.add_argument("name", nargs="?", help="one function (default: all in the namespace)")


def add_alias(commands: Commands) -> None:
    alias = commands.add("alias", None, "Create, update, list and delete aliases.")
    sub = Commands(alias, "alias_command")
    set_ = sub.add(
        "set",
        aliases.run_alias_set,
        "Point alias ALIAS of function NAME at a version (also: alias NAME ALIAS ...).",
    )
    set_.add_argument("function", metavar="NAME", help="function name")
    set_.add_argument("alias", metavar="ALIAS", help="alias name")
    set_.add_argument("--version", required=True, help="published version or $LATEST")
    set_.add_argument(
        "--weight",
        metavar="VERSION=WEIGHT",
        help="send a share (0-1) of the invocations to a second version",
    )
    set_.add_argument("--provisioned", type=int, metavar="N", help="provisioned concurrency")
    set_.add_argument("--description", help="free text")
    list_ = sub.add("list", aliases.run_alias_list, "List the aliases of a function.")
    list_.add_argument("function", metavar="NAME", help="function name")
    delete = sub.add("delete", aliases.run_alias_delete, "Delete an alias.")
    delete.add_argument("function", metavar="NAME", help="function name")
    delete.add_argument("alias", metavar="ALIAS", help="alias name")


def add_route(commands: Commands) -> None:
    route = commands.add("route", None, "Create, list and delete HTTP API routes (ApiRoute).")
    sub = Commands(route, "route_command")
    create = sub.add(
        "create", routes.run_route_create, "Create or update a route; print the URL to call."
    )
    create.add_argument("api", metavar="API", help="HTTP API name, e.g. default")
    create.add_argument("route_key", metavar="ROUTE", help="'METHOD /path/{param}' or $default")
    target = create.add_mutually_exclusive_group(required=True)
    target.add_argument("--function", metavar="NAME", help="function to invoke")
    target.add_argument("--http-url", metavar="URL", help="HTTP backend to proxy to")
    create.add_argument("-q", "--qualifier", help="version or alias of the function")
    create.add_argument("--payload-format", choices=["1.0", "2.0"], help="event format")
    create.add_argument("--timeout-millis", type=int, metavar="MS", help="integration timeout")
    create.add_argument("--name", help="object name (default: derived from API and route)")
    list_ = sub.add("list", routes.run_route_list, "List routes with their URLs.")
    list_.add_argument("api", metavar="API", nargs="?", help="only this API")
    delete = sub.add("delete", routes.run_route_delete, "Delete a route.")
    delete.add_argument("api", metavar="API", help="HTTP API name")
    delete.add_argument("route_key", metavar="ROUTE", help="'METHOD /path' as created")


def add_dlq(commands: Commands) -> None:
    queue = commands.add(
        "dlq", None, "Dead letters of async invocations: list, show, redrive, purge."
    )
    sub = Commands(queue, "dlq_command")

    def scope(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--function", metavar="NAME", help="only this function's")
        parser.add_argument(
            "-A", "--all-namespaces", action="store_true", help="every namespace's, not just -n's"
        )

    list_ = sub.add("list", dlq.run_dlq_list, "List dead letters, oldest first.")
    scope(list_)
    list_.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    show = sub.add("show", dlq.run_dlq_show, "Show one dead letter with its payload.")
    show.add_argument("sequence", type=int, metavar="SEQ")
    redrive = sub.add("redrive", dlq.run_dlq_redrive, "Queue dead letters again as new events.")
    redrive.add_argument("sequences", type=int, nargs="*", metavar="SEQ")
    scope(redrive)
    redrive.add_argument("--all", action="store_true", help="all matching dead letters")
    redrive.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    purge = sub.add("purge", dlq.run_dlq_purge, "Delete dead letters.")
    scope(purge)
    purge.add_argument(
        "--all", action="store_true", help="all of the namespace's (with -A: every dead letter)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubelambda",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    global_options(parser, suppress=False)
    commands = Commands(parser, "command")
    for add in (
        add_deploy,
        add_invoke,
        add_logs,
        add_publish,
        add_alias,
        add_route,
        add_dlq,
        add_status,
    ):
        add(commands)
    return parser


def with_default_alias_command(argv: Sequence[str]) -> list[str]:
    """``alias NAME ALIAS --version V`` is short for ``alias set NAME ALIAS --version V``."""
    args = list(argv)
    if "alias" not in args:
        return args
    position = args.index("alias") + 1
    following = args[position] if position < len(args) else None
    if following is not None and following not in ALIAS_COMMANDS and not following.startswith("-"):
        args.insert(position, "set")
    return args


def parse(argv: Sequence[str]) -> argparse.Namespace:
    return build_parser().parse_args(with_default_alias_command(argv))
