"""The command-line front of every script: fire, with the flags checked before any work and expected errors
told in a line.

fire alone runs the function with the flags it recognises and only afterwards complains about the others (a
misspelt flag runs the whole job with defaults), and leaves `--resume false` the string "false", which is
true. run() checks every flag name against the function's parameters first, converts each value to its
parameter's annotated type (utils.coerce), then calls. Errors a user can fix (bad data, flags, checkpoints,
missing files) print one line and exit 2; SLMREC_DEBUG=1 shows the traceback.
"""

import functools
import inspect
import os
import sys
import typing

import fire

from .backbone import BackboneError
from .data import DataError
from .embeddings import EmbeddingFileError
from .training import CheckpointError, NonFiniteError
from .utils import FlagError, coerce

EXPECTED = (BackboneError, CheckpointError, DataError, EmbeddingFileError, FlagError, NonFiniteError,
            FileNotFoundError, IsADirectoryError, PermissionError)


def flag_names(argv):
    """The names of the --flags in argv (--a-b=1 -> a_b; --noflag -> noflag), up to fire's own after "--"."""
    argv = argv[:argv.index("--")] if "--" in argv else argv
    return [tok[2:].split("=", 1)[0].replace("-", "_") for tok in argv if tok.startswith("--") and len(tok) > 2]


def check_flags(fn, argv):
    params = inspect.signature(fn).parameters
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for name in flag_names(argv):
        if name in params or name == "help" or (name.startswith("no") and name[2:] in params):
            continue
        if not open_ended:  # functions with **flags check those names themselves (utils.split_flags)
            raise FlagError(f"unknown flag --{name}; the options are " + ", ".join(f"--{p}" for p in params))


def typed(fn):
    """fn with each argument converted to its annotated type before the call (FlagError if it cannot be)."""
    hints = typing.get_type_hints(fn)
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        for name, value in list(bound.arguments.items()):
            kind = signature.parameters[name].kind
            if name in hints and kind is not inspect.Parameter.VAR_KEYWORD and value is not None:
                bound.arguments[name] = coerce(name, value, hints[name])
        return fn(*bound.args, **bound.kwargs)

    return call


def run(fn, argv=None):
    """fire.Fire(fn) with the checks of this module."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        check_flags(fn, argv)
        return fire.Fire(typed(fn), command=argv)
    except EXPECTED as e:
        if os.environ.get("SLMREC_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        print("(SLMREC_DEBUG=1 shows where)", file=sys.stderr)
        sys.exit(2)
