"""``python3 -m kubelambda.agent``: the function pod's container entrypoint."""

from kubelambda.agent.main import main

if __name__ == "__main__":
    raise SystemExit(main())
