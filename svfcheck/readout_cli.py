"""``svfcheck readout``: what the top singular vectors of attention heads mean (docs/math.md §5).

Usage::

    svfcheck readout --model NAME [--heads L.H,L.H | L.*] [--top-r 4] [--top-tokens 10]
                     [--dictionary FILE [--dictionary-key KEY] [--dictionary-layout auto|rows|columns]]
                     --out DIR

Writes ``DIR/readouts.json``: ``readouts`` (one row per head and singular index: the tokens
scoring highest and lowest on the query side u and key side v, and the unembedding's top
tokens; :func:`svfcheck.real.readouts.singular_readouts`) and, with ``--dictionary``,
``alignment`` (per head: cosines with the dictionary's directions, raw and whitened, best
matches, one-to-one matching and a random baseline; :func:`svfcheck.real.dictionary.dictionary_alignment`).
Without ``--heads``: every head of layer 0. Bad input exits with status 2 and a message.
"""

from __future__ import annotations

import argparse
import json

from .cliargs import SEED_MAX, UsageError, bounded_int, input_file, parse_args, prepare_out_dir, run_guarded

__all__ = ["build_parser", "head_list", "main"]

#: Largest --top-r accepted by the parser (the real bound, d_h, is checked once the model is loaded).
MAX_TOP_R = 4096
MAX_TOP_TOKENS = 1000


def head_list(text: str) -> list[tuple[int, int | None]]:
    """argparse ``type=`` for ``L.H,L.H`` (``L.*``: every head of layer L); ``(L, None)`` for ``L.*``."""
    out: list[tuple[int, int | None]] = []
    for item in str(text).split(","):
        a, dot, b = item.strip().partition(".")
        if not dot or not a.isdigit() or not (b.isdigit() or b == "*"):
            raise argparse.ArgumentTypeError(f"expected LAYER.HEAD pairs like 0.1,2.3 (or 0.* for a whole layer); "
                                             f"got {item.strip()!r} in {text!r}")
        pair = (int(a), None if b == "*" else int(b))
        if pair in out:
            raise argparse.ArgumentTypeError(f"{text!r} repeats {item.strip()}")
        out.append(pair)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="svfcheck readout", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="offline name (smollm2-135m, minilm-l6, gemma3-270m), local folder or hub id")
    p.add_argument("--revision", default=None, help="hub revision, e.g. step143000 for Pythia")
    p.add_argument("--random-init", action="store_true", help="read out a seeded random initialisation of the architecture")
    p.add_argument("--heads", type=head_list, default=None, metavar="L.H,...",
                   help="heads to read out, e.g. 0.1,3.4 or 2.* (default: every head of layer 0)")
    p.add_argument("--top-r", type=bounded_int(1, MAX_TOP_R), default=4, help="singular vectors per head, at most d_h (default: 4)")
    p.add_argument("--top-tokens", type=bounded_int(1, MAX_TOP_TOKENS), default=10, help="tokens per pole (default: 10)")
    p.add_argument("--dictionary", default=None, metavar="FILE",
                   help="feature directions in the residual stream, (n_features, d_model) or transposed: .safetensors or .npy")
    p.add_argument("--dictionary-key", default=None, metavar="KEY", help="the tensor of a .safetensors file holding several")
    p.add_argument("--dictionary-layout", choices=("auto", "rows", "columns"), default="auto",
                   help="which axis holds the features (default: auto, by d_model; needed for a square matrix)")
    p.add_argument("--baseline-samples", type=bounded_int(0, 100_000), default=32,
                   help="random orthonormal frames of the alignment's random baseline (default: 32)")
    p.add_argument("--seed", type=bounded_int(0, SEED_MAX), default=0, help="seed of the random baseline and --random-init (default: 0)")
    p.add_argument("--out", required=True, help="output folder for readouts.json")
    p.add_argument("--quiet", action="store_true", help="no progress messages or bars")
    return p


def _heads(args, mh) -> list[tuple[int, int]]:
    """The --heads list with ``L.*`` expanded (ranges are checked by resolve_heads)."""
    if args.heads is None:
        return [(0, h) for h in range(mh.layers[0].n_heads)]
    out = []
    for layer, head in args.heads:
        if head is not None:
            out.append((layer, head))
            continue
        if not 0 <= layer < mh.n_layers:
            raise UsageError(f"--heads {layer}.*: layer {layer} is out of range; the model has layers 0..{mh.n_layers - 1}")
        out += [(layer, h) for h in range(mh.layers[layer].n_heads) if (layer, h) not in out]
    return out


def _print_summary(rows: list[dict], alignment: list[dict] | None) -> None:
    def toks(lst):
        return " ".join(repr(t["token"]) if t["token"] is not None else str(t["id"]) for t in lst[:3])

    for r in rows:
        print(f"{r['layer']}.{r['head']} #{r['index']} s={r['singular_value']:.3g}  "
              f"+ q[{toks(r['query_top'])}] k[{toks(r['key_top'])}]  − q[{toks(r['query_bottom'])}] k[{toks(r['key_bottom'])}]")
    for a in alignment or ():
        null = a["random_baseline"].get("random_dictionaries")
        parts = []
        for side in ("query", "key"):
            for form in ("raw", "whitened"):
                got = a[side][form]["matching"]["mean_abs_cos"]
                ref = f" (random {null[side][form]['matching_mean_abs_cos']:.3f})" if null else ""
                parts.append(f"{side} {form} {got:.3f}{ref}")
        print(f"{a['layer']}.{a['head']} alignment (one-to-one mean |cos|): " + "; ".join(parts))


def run(args: argparse.Namespace) -> int:
    from svfcheck.real.dictionary import dictionary_alignment, load_dictionary
    from svfcheck.real.heads import cached_heads
    from svfcheck.real.models import load_model
    from svfcheck.real.readouts import READOUT_NOTES, resolve_heads, singular_readouts, unembedding

    if args.dictionary_key is not None and args.dictionary is None:
        raise UsageError("--dictionary-key only applies with --dictionary")
    dict_path = input_file(args.dictionary, "--dictionary") if args.dictionary is not None else None
    out = prepare_out_dir(args.out)  # before the model is loaded: a bad --out must not cost the work
    lm = load_model(args.model, revision=args.revision, random_init=args.random_init, seed=args.seed, progress=not args.quiet)
    mh = cached_heads(lm.model)
    heads = resolve_heads(mh, _heads(args, mh))
    d_h = min(mh.layer(layer).head_dim for layer, _ in heads)
    if args.top_r > d_h:
        raise UsageError(f"--top-r {args.top_r} is larger than the head dimension d_h = {d_h} of {args.model}; use at most {d_h}")
    n_vocab = lm.model.get_input_embeddings().weight.shape[0]
    if args.top_tokens > n_vocab:
        raise UsageError(f"--top-tokens {args.top_tokens} is larger than the vocabulary of {args.model} ({n_vocab} tokens)")
    d_model = mh.layers[0].d_model
    dictionary = None
    if dict_path is not None:
        try:
            dictionary = load_dictionary(dict_path, d_model, key=args.dictionary_key, layout=args.dictionary_layout)
        except ValueError as e:
            raise UsageError(f"--dictionary {dict_path}: {e}") from None
    rows = singular_readouts(lm, heads, top_r=args.top_r, top_tokens=args.top_tokens)
    alignment = None
    if dictionary is not None:
        alignment = dictionary_alignment(lm, dictionary, heads, top_r=args.top_r, baseline_samples=args.baseline_samples,
                                         seed=args.seed)
    doc = {
        "model": args.model, "architecture": lm.architecture, "revision": args.revision, "random_init": args.random_init,
        "seed": args.seed if args.random_init else None, "d_model": d_model, "heads": [list(h) for h in heads],
        "top_r": args.top_r, "top_tokens": args.top_tokens, "unembedding": unembedding(lm)[1],
        "notes": READOUT_NOTES, "readouts": rows,
        "alignment": None if dictionary is None else {
            "dictionary": {"path": str(dict_path), "key": args.dictionary_key, "layout": args.dictionary_layout,
                           "n_features": int(dictionary.shape[0])},
            "through_norm": True, "baseline_samples": args.baseline_samples, "heads": alignment},
    }
    (out / "readouts.json").write_text(json.dumps(doc, ensure_ascii=False) + "\n", encoding="utf-8")
    if not args.quiet:
        _print_summary(rows, alignment)
    print(f"wrote {out / 'readouts.json'} ({len(heads)} heads, {len(rows)} singular vectors)")
    return 0


def _user_errors() -> tuple[type[BaseException], ...]:
    from svfcheck.real.models import ModelLoadError

    return (ModelLoadError,)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    if isinstance(args, int):
        return args
    return run_guarded("svfcheck readout", lambda: run(args), _user_errors())
