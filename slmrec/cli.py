"""The command-line front of every script: fire, with the flags checked before any work and expected errors
told in a line.

fire alone runs the function with the flags it recognises and only afterwards complains about the others (a
misspelt flag runs the whole job with defaults), and leaves `--resume false` the string "false", which is
true. run() checks every flag name against the function's parameters first, converts each value to its
parameter's annotated type (flags.coerce), then calls. Errors a user can fix (bad data, flags, checkpoints,
missing files) print one line and exit 2; SLMREC_DEBUG=1 shows the traceback.
"""

import dataclasses
import errno
import functools
import inspect
import os
import re
import sys
import types
import typing

import fire

from .errors import EXPECTED, FlagError
from .flags import coerce

FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a full disk, a quota, a file-size limit
READ_ONLY = (errno.EROFS,)  # a read-only file system (a folder without write permission is a PermissionError)


def flag_names(argv):
    """The names of the --flags in argv (--a-b=1 -> a_b; --noflag -> noflag), up to fire's own after "--"."""
    argv = argv[: argv.index("--")] if "--" in argv else argv
    return [tok[2:].split("=", 1)[0].replace("-", "_") for tok in argv if tok.startswith("--") and len(tok) > 2]


def check_flags(fn, argv):
    params = inspect.signature(fn).parameters
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for name in flag_names(argv):
        if name in params or name == "help" or (name.startswith("no") and name[2:] in params):
            continue
        if not open_ended:  # functions with **flags check those names themselves (flags.split_flags)
            raise FlagError(f"unknown flag --{name}; the options are " + ", ".join(f"--{p}" for p in params))


def _is_str(hint) -> bool:
    return hint is str or (typing.get_origin(hint) in (typing.Union, types.UnionType) and str in typing.get_args(hint))


def string_flags(fn, configs=()) -> set:
    """The flags whose values are text (annotated str, or str | None, on fn or a config's field)."""
    names = {n for n, h in typing.get_type_hints(fn).items() if _is_str(h)}
    for cls in configs:
        names |= {n for n, h in typing.get_type_hints(cls).items() if _is_str(h)}
    return names


def keep_text(argv, names) -> list:
    """argv with the values of text flags quoted for fire, which otherwise reads them as Python: an item id
    "1.50" would become 1.5, "1e5" 100000.0, "007" 7 and "a,b" a tuple. Ids and paths stay what was typed."""
    out, i = [], 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":  # fire's own flags follow
            return out + argv[i:]
        name = tok[2:].split("=", 1)[0].replace("-", "_") if tok.startswith("--") else None
        if name in names and "=" in tok:
            out.append(f"--{tok[2:].split('=', 1)[0]}={tok.split('=', 1)[1]!r}")
        elif name in names and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out += [tok, repr(argv[i + 1])]
            i += 1
        else:
            out.append(tok)
        i += 1
    return out


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


def field_notes(cls) -> dict:
    """{field: the comment after it} in a dataclass's source: what each flag means, written once, beside its
    default."""
    notes = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): [^#]*#\s*(.*)$", line)
        if m:
            notes[m.group(1)] = m.group(2)
    return notes


def help_text(fn, configs=(), defaults=None) -> str:
    """The script's docstring, its own flags, then every field of its config dataclasses with its default (the
    script's `defaults` over the dataclass's) and its meaning."""
    lines = [
        f"usage: python {sys.argv[0] if sys.argv else 'SCRIPT'} [--flag value ...]",
        "",
        inspect.cleandoc(fn.__doc__ or ""),
        "",
        "flags:",
    ]
    for p in inspect.signature(fn).parameters.values():
        if p.kind is not inspect.Parameter.VAR_KEYWORD:
            lines.append(
                f"  --{p.name}" + ("" if p.default is inspect.Parameter.empty else f" (default {p.default!r})")
            )
    for cls in configs:
        notes = field_notes(cls)
        lines += ["", f"{cls.__name__} ({inspect.getmodule(cls).__name__}):"]
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                default = (defaults or {}).get(
                    f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory()
                )
                lines.append(f"  --{f.name} (default {default!r})" + (f": {notes[f.name]}" if f.name in notes else ""))
    return "\n".join(lines)


def run(fn, argv=None, configs=(), defaults=None):
    """fire.Fire(fn) with the checks of this module. configs: the dataclasses whose fields the script takes as
    flags (listed by --help with `defaults` over their own)."""
    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(help_text(fn, configs, defaults))
        return None
    try:
        check_flags(fn, argv)
        return fire.Fire(typed(fn), command=keep_text(argv, string_flags(fn, configs)))
    except EXPECTED as e:
        if os.environ.get("SLMREC_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        print("(SLMREC_DEBUG=1 shows where)", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno not in FULL + READ_ONLY or os.environ.get("SLMREC_DEBUG"):
            raise
        if e.errno in READ_ONLY:
            print(
                f"error: {e.strerror}: cannot write {e.filename or 'an output'}; choose a writable folder",
                file=sys.stderr,
            )
            sys.exit(2)
        # Every output is written to a temporary name first (files.written_whole, prepare's folder): the
        # temporary file is removed and what was there before is untouched.
        print(
            f"error: {e.strerror} writing {e.filename or 'an output'}: nothing half-written is left; free "
            f"space and run the command again",
            file=sys.stderr,
        )
        sys.exit(2)
    except KeyboardInterrupt:
        if os.environ.get("SLMREC_DEBUG"):
            raise
        # Every file is written whole (files.written_whole) and checkpoints are complete or skipped on resume.
        hint = (
            "; the same command with --resume true continues from the last complete checkpoint"
            if "resume" in inspect.signature(fn).parameters
            else "; run the command again"
        )
        print(f"interrupted: nothing half-written is left{hint}", file=sys.stderr)
        sys.exit(130)
