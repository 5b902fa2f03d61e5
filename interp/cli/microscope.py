"""`interp microscope TEXT_OR_FILE | --corpus [PATH]`: LLM-Microscope's per-token nonlinearity and context
memory, per-layer linearity and intrinsic dimension, the logit lens, and (corpus runs) the class comparison
and removal test."""

from __future__ import annotations

from pathlib import Path

from interp.cli.types import int_range, positive_int


def register(sub, common) -> None:
    p = sub.add_parser("microscope", parents=[common],
                       help="LLM-Microscope: token nonlinearity, context memory, intrinsic dimension, logit lens")
    p.add_argument("text", nargs="?", default=None, metavar="TEXT_OR_FILE",
                   help="a prompt, or the path of a UTF-8 text file (an existing path is read as a file)")
    p.add_argument("--corpus", nargs="?", const="python-docs", default=None, metavar="PATH",
                   help="analyse corpus tokens (no PATH: the built-in corpus's prose) instead of a text; with a text, "
                        "the corpus only supplies the reference sample")
    p.add_argument("--reference-tokens", type=int_range(2), default=4096,
                   help="corpus tokens for the linear fits, intrinsic dimension and the memory read-out (default 4096)")
    p.add_argument("--corpus-tokens", type=int_range(2), default=2048,
                   help="tokens analysed by --corpus (default 2048)")
    p.add_argument("--seq-len", type=int_range(2), default=128, help="corpus row length (default 128)")
    p.add_argument("--max-tokens", type=int_range(2), default=512, help="longest text accepted (default 512)")
    p.add_argument("--window", type=positive_int, default=8, help="preceding tokens the read-out recovers (default 8)")
    p.add_argument("--steps", type=positive_int, default=100, help="read-out training steps (default 100)")
    p.add_argument("--seed", type=int_range(0), default=0)
    p.add_argument("--no-removal", action="store_true", help="skip the perplexity-after-removal test of --corpus")
    p.set_defaults(run=run)


TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")


def looks_like_path(arg: str) -> bool:
    """A single word with a folder separator or a text-file suffix: meant as a file, not as a prompt."""
    return not any(ch.isspace() for ch in arg) and ("/" in arg or arg.lower().endswith(TEXT_SUFFIXES))


def read_text(arg: str) -> tuple[str, str]:
    """(text, source label) for the positional argument: the file's contents when it names an existing path."""
    from interp.errors import InterpError, file_error

    if not arg.strip():
        raise InterpError("the text is empty; pass some text")
    path = Path(arg).expanduser()
    try:
        is_path = path.exists()
    except (OSError, ValueError):  # a prompt too long or odd to be a path
        is_path = False
    if not is_path:
        if looks_like_path(arg):
            raise InterpError(f"file {arg} not found; check the path (one word with a / or a .txt/.md suffix "
                              "is read as a file)")
        return arg, arg
    if path.is_dir():
        raise InterpError(f"{path} is a folder; pass a text file, or use --corpus {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise file_error(path, e) from None
    if not text.strip():
        raise InterpError(f"{path} is empty; give it some text")
    return text, str(path)


def run(args):
    from interp.cli import load_model_for
    from interp.errors import InterpError
    from interp.microscope import MicroscopeConfig, microscope, prepare_corpus
    from interp.microscope.memory import MemoryConfig

    if args.text is None and args.corpus is None:
        raise InterpError("nothing to analyse; pass a text, a text file, or --corpus")
    text, source = (None, None) if args.text is None else read_text(args.text)
    config = MicroscopeConfig(reference_tokens=args.reference_tokens, corpus_tokens=args.corpus_tokens,
                              seq_len=args.seq_len, max_tokens=args.max_tokens, removal=not args.no_removal,
                              memory=MemoryConfig(window=args.window, steps=args.steps, seed=args.seed))
    prepare_corpus(args.corpus)  # a bad corpus path fails here, before the model loads
    return microscope(load_model_for(args), text, corpus=args.corpus, source=source, config=config)
