"""Entry point of the ``kubelambda`` command."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Sequence

from kubelambda.cli.errors import CliError, ExitCode
from kubelambda.cli.kube import KubeClient, default_namespace
from kubelambda.cli.output import Format
from kubelambda.cli.parser import parse
from kubelambda.cli.platform import Platform, PlatformSettings
from kubelambda.cli.session import Session


def session_for(args: argparse.Namespace) -> Session:
    kube = KubeClient(args.kubeconfig, args.context)
    settings = PlatformSettings.resolve(
        os.environ,
        release=args.release,
        namespace=args.release_namespace,
        gateway_url=args.gateway_url,
        store_url=args.store_url,
        invoker_url=args.invoker_url,
    )
    return Session(
        kube=kube,
        platform=Platform(kube, settings),
        namespace=args.namespace or default_namespace(args.kubeconfig, args.context),
        stdout=sys.stdout,
        stderr=sys.stderr,
        stdin=sys.stdin.buffer,
        output=Format(args.output) if args.output else None,
    )


def quiet_thread_errors(hook: threading.ExceptHookArgs) -> None:
    """The kubernetes client's port-forward threads die with a traceback when the other end
    closes early; the request that used them reports the failure already."""
    sys.stderr.write(f"kubelambda: {hook.exc_type.__name__}: {hook.exc_value}\n")


def run(argv: Sequence[str]) -> int:
    args = parse(argv)
    threading.excepthook = quiet_thread_errors
    try:
        return int(args.run(args, session_for(args)))
    except CliError as error:
        sys.stderr.write(f"kubelambda: error: {error}\n")
        return int(error.exit_code)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): nothing left to say to anyone.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitCode.OK)


def main() -> None:
    sys.exit(run(sys.argv[1:]))
