"""What every command-line tool of the project shares: the parser, argument types, one-line errors.

    parser = cli.parser("megakernel.generate", __doc__)       # usage: python -m megakernel.generate ...
    parser.add_argument("--temperature", type=cli.non_negative_float, default=0.0, help="...")

    @cli.command(parser, validate=check_args)                  # check_args(args): everything checkable
    def main(args) -> int:                                     #   before a model loads
        ...
    main(["--temperature", "-1"])                              # -> 2, one line on stderr

Exit status and stderr, the same for every tool:

* **2, bad usage**: anything refused before the tool starts its work: argparse errors, the argument types below,
  and whatever ``validate`` raises (a path that is not a checkpoint directory, a prompt longer than the cache, a
  stage this machine cannot run, ...). Validation reads at most config files, file headers and the tokenizer,
  so a mistake costs no model load.
* **1, failure**: an error while running (a tensor that fails to load, a check that fails, ...).
* **130**: interrupted (Ctrl-C).

Either way stderr gets one line, ``python -m TOOL: error: MESSAGE``, never a traceback; ``--debug`` (every tool
has it) lets the exception propagate instead, traceback and all.

This module lives in ``reference`` (not ``megakernel``) so that ``python -m reference.generate`` needs no Numba.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from pathlib import Path

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_MAX_MESSAGE = 600  # characters: a library's multi-kilobyte message is cut, the line stays readable


class UsageError(ValueError):
    """A command line that cannot run as given (exit status 2)."""


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (raised as :class:`UsageError`, reported by :func:`command`)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see --help)")


def parser(module: str, doc: str | None, **kwargs) -> Parser:
    """A parser whose usage line reads ``python -m <module>``, described by the first paragraph of ``doc``,
    with the ``--debug`` flag every tool has. The rest of ``doc`` is shown by ``--help``."""
    summary, _, rest = (doc or "").strip().partition("\n\n")
    p = Parser(prog=f"python -m {module}", description=summary, epilog=rest or None,
               formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    p.add_argument("--debug", action="store_true", help="on an error, show the Python traceback instead of one line")
    return p


def one_line(e: BaseException) -> str:
    """An exception as one line: its message (the type name too when that adds information)."""
    text = " ".join(str(e).split()) or type(e).__name__
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 5] + " ..."
    module = type(e).__module__ or ""
    # the project's typed errors and the usual input errors say enough by their message
    if isinstance(e, (UsageError, ValueError, TypeError, OSError)) or module.startswith(("reference", "megakernel")):
        return text
    return f"{type(e).__name__}: {text} (rerun with --debug to see where)"


def command(p: Parser, validate=None):
    """Decorate ``run(args) -> int`` into ``main(argv=None) -> int`` with the exit statuses above."""

    def wrap(run):
        @functools.wraps(run)
        def main(argv=None) -> int:
            argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
            debug = "--debug" in argv
            running = False
            try:
                args = p.parse_args(argv)
                if validate is not None:
                    validate(args)
                running = True
                return run(args)
            except KeyboardInterrupt:
                if debug:
                    raise
                print(f"{p.prog}: interrupted", file=sys.stderr)
                return EXIT_INTERRUPTED
            except Exception as e:  # noqa: BLE001 (every error becomes one line; --debug shows the traceback)
                if debug:
                    raise
                sys.stdout.flush()
                print(f"{p.prog}: error: {one_line(e)}", file=sys.stderr)
                return EXIT_USAGE if isinstance(e, UsageError) or not running else EXIT_FAILURE

        return main

    return wrap


# ------------------------------------------------------------------------------------------ argument types
# Each raises argparse.ArgumentTypeError, which argparse reports as "argument --flag: <message>".
def _number(text: str, kind=float):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def seed(text: str) -> int:
    value = _number(text, int)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63), got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def probability(text: str) -> float:
    value = _number(text)
    if not 0.0 < value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text!r}")
    return value


def positive_int_list(text: str) -> list[int]:
    """``16,512,4096`` -> [16, 512, 4096], each an integer >= 1."""
    values = [positive_int(x.strip()) for x in text.split(",") if x.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return values


def non_negative_int_list(text: str) -> list[int]:
    """``512,4096`` -> [512, 4096], each an integer >= 0."""
    values = [non_negative_int(x.strip()) for x in text.split(",") if x.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {text!r}")
    return values


def name_list(choices, what: str = "name", allow_all: bool = False):
    """A type for ``--flag a,b,c``: a list of names, each one of ``choices`` (listed in the error); with
    ``allow_all``, ``all`` means every choice."""
    choices = tuple(choices)

    def parse(text: str) -> list[str]:
        if allow_all and text.strip() == "all":
            return list(choices)
        names = [x.strip() for x in text.split(",") if x.strip()]
        unknown = [x for x in names if x not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {unknown[0]!r}: choose from {', '.join(choices)}")
        if not names:
            raise argparse.ArgumentTypeError(f"give at least one {what} ({', '.join(choices)})")
        return names

    parse.__name__ = f"{what} list"
    return parse


# ------------------------------------------------------------------------------------------ shared arguments
def add_generation_arguments(p: argparse.ArgumentParser) -> None:
    """What every text-generating CLI takes: --prompt, --chat, --max-new-tokens, the sampling options and
    --no-stop-at-eos."""
    p.add_argument("--prompt", default="The quick brown fox", metavar="TEXT",
                   help="the prompt text (default: %(default)r)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template (one user turn)")
    p.add_argument("--max-new-tokens", type=positive_int, default=32, metavar="N",
                   help="tokens to generate, >= 1 (default: %(default)s; fewer if EOS comes first)")
    add_sampling_arguments(p)
    p.add_argument("--no-stop-at-eos", action="store_true", help="keep going after an end-of-sequence token")


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """--temperature, --top-k, --top-p, --seed, checked by type (the sampler's own checks, as one-line errors)."""
    p.add_argument("--temperature", type=non_negative_float, default=0.0, metavar="T",
                   help="sampling temperature, a finite number >= 0; 0 = greedy (default)")
    p.add_argument("--top-k", type=non_negative_int, default=0, metavar="K",
                   help="sample among the K most likely tokens; 0 = all (default)")
    p.add_argument("--top-p", type=probability, default=1.0, metavar="P",
                   help="nucleus sampling: the smallest set of tokens whose probability reaches P, in (0, 1] "
                        "(default: 1 = off)")
    p.add_argument("--seed", type=seed, default=None, metavar="N",
                   help="seed of the sampler (same seed, same tokens); default: a fresh one each run")


def checkpoint_config(flag: str, path):
    """The config of a checkpoint directory argument (the directory and its config.json checked, nothing else
    read): what a tool needs for checks that must come before the weights' (e.g. a model too big for the
    simulator). Errors name the flag."""
    from .checkpoint import checkpoint_dir
    from .config import Qwen35Config

    try:
        return Qwen35Config.from_pretrained(checkpoint_dir(path, need_weights=False))
    except (ValueError, OSError) as e:
        raise UsageError(f"{flag}: {one_line(e)}") from e


def checkpoint_argument(flag: str, path, config=None):
    """Check a checkpoint directory argument without reading tensor data (see
    :func:`reference.checkpoint.check_checkpoint`: its files' headers, every tensor's name and shape against the
    config); returns the config. Errors name the flag."""
    from .checkpoint import check_checkpoint

    if config is None:
        config = checkpoint_config(flag, path)
    try:
        return check_checkpoint(path, config)
    except (ValueError, OSError) as e:
        raise UsageError(f"{flag}: {one_line(e)}") from e


def output_directory(flag: str, path) -> None:
    """Refuse an output directory argument that names an existing file (a directory is created if missing)."""
    if path is not None and Path(path).is_file():
        raise UsageError(f"{flag} {path} is a file; give a directory (created if missing)")


def check_prompt(flag: str, ids: list[int], config, max_new_tokens: int, capacity: int, capacity_note: str) -> None:
    """Refuse a prompt that is empty, has a token id outside the model's vocabulary, or does not fit the cache
    with ``max_new_tokens`` more (the last new token is never fed back, so it needs no position)."""
    if not ids:
        raise UsageError(f"{flag} is empty: give at least one token of text")
    bad = [t for t in ids if not 0 <= t < config.vocab_size]
    if bad:
        raise UsageError(f"{flag} has token id {bad[0]}, outside this model's vocabulary of {config.vocab_size} "
                         "(a small test config knows only the first ids: try a short ASCII prompt)")
    need = len(ids) + max_new_tokens - 1
    if need > capacity:
        raise UsageError(f"the prompt ({len(ids)} tokens) and --max-new-tokens {max_new_tokens} need {need} "
                         f"positions, more than the {capacity} this run can hold ({capacity_note}): shorten the "
                         "prompt or lower --max-new-tokens")


__all__ = ["EXIT_FAILURE", "EXIT_USAGE", "EXIT_INTERRUPTED", "UsageError", "Parser", "parser", "command",
           "one_line", "positive_int", "non_negative_int", "seed", "non_negative_float", "positive_float",
           "probability", "positive_int_list", "name_list", "add_sampling_arguments", "add_generation_arguments",
           "checkpoint_config", "checkpoint_argument", "check_prompt"]
