"""``python -m kubelambda.gateway``: the gateway's container entrypoint."""

from kubelambda.gateway.main import main

if __name__ == "__main__":
    raise SystemExit(main())
