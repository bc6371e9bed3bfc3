"""`python -m steerlens.eval` / `steerlens-eval`: lm-eval's command line with `--model steerlens`.

lm-eval finds model classes in its own registry, which knows nothing of steerlens until
`steerlens.eval.lm_class()` registers the class "steerlens"; this wrapper does that, adds
steerlens' task directory to `--include_path` (unless one is given), then hands the arguments to
lm-eval's own CLI (`lm_eval.__main__.cli_evaluate`), so every lm-eval flag works unchanged.
"""

from __future__ import annotations

import sys

from . import lm_class, task_dir


def main(argv: list[str] | None = None) -> None:
    """Register the steerlens model class, then run lm-eval's CLI.

    Args:
        argv: the arguments (default: sys.argv[1:]).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    lm_class()
    from lm_eval.__main__ import cli_evaluate

    listing = bool(args) and args[0] in ("ls", "validate")
    if (listing or "--tasks" in args or any(a.startswith("--tasks=") for a in args)) and not any(
            a == "--include_path" or a.startswith("--include_path=") for a in args):
        args += ["--include_path", str(task_dir())]
    sys.argv = ["steerlens-eval", *args]
    cli_evaluate()


if __name__ == "__main__":
    main()
