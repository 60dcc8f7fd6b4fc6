"""``python -m kubelambda.invoker``: the invoker's container entrypoint."""

from kubelambda.invoker.main import main

if __name__ == "__main__":
    raise SystemExit(main())
