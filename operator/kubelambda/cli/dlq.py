"""``dlq``: the dead-letter queue of async invocations, through the invoker's admin API."""

from __future__ import annotations

import argparse
import urllib.parse
from typing import Any

from kubelambda.cli.errors import CliError, NotFound, UsageError
from kubelambda.cli.output import Column, Format, render
from kubelambda.cli.session import Session

PAGE_SIZE = 1000
DEAD_LETTER_COLUMNS = (
    Column("Seq", "sequence"),
    Column("Namespace", "namespace"),
    Column("Function", "function"),
    Column("Qualifier", "qualifier"),
    Column("Condition", "condition"),
    Column("Error", "errorCode"),
    Column("Attempts", "attempts"),
    Column("Failed", "failedTime"),
    Column("Request ID", "requestId"),
)


def admin(session: Session, method: str, path: str, query: dict[str, Any] | None = None) -> Any:
    """One admin API call: its JSON answer (None for 204)."""
    if query:
        path += "?" + urllib.parse.urlencode(query)
    response = session.platform.invoker().request(
        method, path, headers={"Authorization": f"Bearer {session.platform.invoker_token()}"}
    )
    if response.status == 204:
        return None
    if response.status == 404:
        raise NotFound(response.message())
    if response.status == 401:
        raise CliError(f"the invoker refused the admin token: {response.message()}")
    if response.status >= 300:
        raise CliError(f"the invoker's admin API answered {response.status}: {response.message()}")
    return response.json()


def filters(args: argparse.Namespace, session: Session) -> dict[str, str]:
    """The namespace (unless --all-namespaces) and --function."""
    result = {} if args.all_namespaces else {"namespace": session.namespace}
    if args.function:
        result["function"] = args.function
    return result


def run_dlq_list(args: argparse.Namespace, session: Session) -> int:
    letters: list[dict[str, Any]] = []
    after = 0
    while len(letters) < args.limit:
        page_size = min(PAGE_SIZE, args.limit - len(letters))
        page = admin(
            session, "GET", "/dlq", {**filters(args, session), "after": after, "limit": page_size}
        )
        letters += page["deadLetters"]
        if page.get("next") is None:
            break
        after = page["next"]
    output = session.format()
    if not letters and output is Format.TABLE:
        session.note("no dead letters")
        return 0
    session.stdout.write(render(letters, output, DEAD_LETTER_COLUMNS))
    return 0


def run_dlq_show(args: argparse.Namespace, session: Session) -> int:
    letter = admin(session, "GET", f"/dlq/{args.sequence}")
    # The payload is the point of looking at one dead letter: JSON unless asked otherwise.
    session.stdout.write(render(letter, session.format(Format.JSON), DEAD_LETTER_COLUMNS))
    return 0


def run_dlq_redrive(args: argparse.Namespace, session: Session) -> int:
    if args.sequences and (args.function or args.all):
        raise UsageError("redrive either SEQ... or --function / --all, not both")
    if args.sequences:
        redriven = [
            sequence
            for number in args.sequences
            for sequence in admin(session, "POST", f"/dlq/{number}/redrive")["redriven"]
        ]
    elif args.function or args.all:
        answer = admin(
            session, "POST", "/dlq/redrive", {**filters(args, session), "limit": args.limit}
        )
        redriven = answer["redriven"]
    else:
        raise UsageError("say what to redrive: SEQ..., --function NAME or --all")
    session.stdout.write(f"redriven {len(redriven)} dead letter(s)\n")
    return 0


def run_dlq_purge(args: argparse.Namespace, session: Session) -> int:
    if not (args.function or args.all):
        raise UsageError("say what to purge: --function NAME, or --all")
    query = filters(args, session)
    if not query:
        query = {"all": "true"}
    purged = admin(session, "POST", "/dlq/purge", query)["purged"]
    session.stdout.write(f"purged {purged} dead letter(s)\n")
    return 0
