"""The paper's analyses of one exported model on one corpus, as a self-contained HTML page and a JSON file.

    python -m analysis.report --model exported_models/charlm --text data/tinyshakespeare.txt --out reports/charlm
    python -m analysis.report --tfserving localhost:8500 --model-name charlm --text FILE --out DIR

The corpus is split as training split it (validation = the last val_fraction, from the model's charlm.json).
The n-gram models are counted on the training split and every model is scored on the whole validation
split; activations (cells, saturation) are taken on its first --activation-chars characters. Writes
OUT/report.html (figures embedded), OUT/report.json (every number), OUT/figures/*.png.

On code (C or Python, see corpus_language) strings and comments are lexed as that language has them, brackets
inside them are left out of the bracket matching, and the page adds the paper's code cells and its long-range
comparison on closing braces.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up chatter would bury the progress lines

from analysis import advantage, cells, errors, features, figures, ngrams, saturation
from analysis.activations import text_activations
from analysis.exported import ModelError, check_vocabulary
from analysis.scoring import bits_per_char, log2_probs
from model_interface.client import ModelClient
from model_interface.errors import ModelInterfaceError

PAPER = ("The paper's best LSTM against its 20-gram model, test cross-entropy in bits per character: "
         "1.077 vs 1.195 on War and Peace, 0.84 vs 0.889 on the Linux kernel source.")
WINDOW_CHARS = 500  # characters of text shown coloured by each feature's best cell
CODE_FEATURES = ("bracket_depth", "indentation", "inside_comment", "inside_string", "inside_quotes")  # the Linux cells
LANGUAGES = ("c", "python", "prose")


class Progress:
    """Prints how far a long step has got, at most every 10% (a log, not a terminal animation)."""

    def __init__(self, label: str, unit: str = "characters"):
        self.label, self.unit, self.started, self.shown = label, unit, time.time(), -1

    def __call__(self, done: int, total: int) -> None:
        tenth = int(10 * done / max(1, total))
        if tenth > self.shown:
            self.shown = tenth
            say(f"  {self.label}: {done:,}/{total:,} {self.unit} ({100 * done / max(1, total):.0f}%, "
                f"{time.time() - self.started:.0f}s)")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def open_client(model: str | None = None, tfserving: str | None = None, name: str = "charlm",
                version: int | None = None) -> ModelClient:
    """The model the flags name, its metadata read: a bad --model or --tfserving fails here, in words naming
    the flag, before any analysis starts."""
    if tfserving:
        client = ModelClient.open(tfserving=tfserving, name=name, version=version)
        flag = f"--tfserving {tfserving}"
    elif model is not None:
        client = ModelClient.open(model=Path(model), version=version, what="--model")
        flag = f"--model {model}"
    else:
        raise ModelError("give a model directory (--model) or a TensorFlow Serving address (--tfserving)")
    try:
        client.metadata  # the first call: nothing answering, or no charlm version, shows here
    except ModelInterfaceError as e:
        client.close()
        raise ModelError(f"{flag}: {e}") from None
    return client


def corpus_language(text_path: Path, text: str, language: str | None = None) -> tuple[str, str]:
    """(language, what decided it): --language if given; else the "language" of the corpus' own metadata beside
    it (data/linux-kernel.json, written by `python -m training.corpus`) when its sha256 is this text's; else a
    sniff of the text (features.sniff_language)."""
    if language:
        return language, "--language"
    facts_path = Path(text_path).with_suffix(".json")
    try:
        facts = json.loads(facts_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        facts = None
    if isinstance(facts, dict) and facts.get("language") in LANGUAGES and \
            facts.get("sha256") == hashlib.sha256(text.encode("utf-8")).hexdigest():
        return facts["language"], str(facts_path)
    return features.sniff_language(text), "a sniff of the text"


def analyse(client: ModelClient, text: str, activation_chars: int = 20_000, max_order: int = ngrams.MAX_ORDER,
            regions: int = 16, language: str | None = None,
            language_from: str = "a sniff of the text") -> tuple[dict, dict[str, bytes], dict]:
    """Runs every analysis; returns (numbers for the JSON, PNG figures by name, extras for the HTML)."""
    timings = {}
    language = language or features.sniff_language(text)
    meta = client.metadata
    train, val = meta.split(text)
    if not train or not val:
        raise ModelError(f"the text ({len(text):,} characters) is too short to split")
    check_vocabulary(client, text)

    started = time.time()
    say(f"scoring the validation split ({len(val):,} characters) with the LSTM")
    lstm_log2 = log2_probs(client, val, regions=regions, progress=Progress("scored"))
    lstm_bpc = bits_per_char(lstm_log2)
    timings["lstm_scoring_s"] = round(time.time() - started, 1)

    started = time.time()
    say(f"counting n-grams of order 1-{max_order} on the training split ({len(train):,} characters)")
    # The LSTM's vocabulary for the n-grams too: both spread their probability over the same characters.
    kneser_ney = ngrams.KneserNey(train, meta.vocab, max_order, progress=Progress("counted", "orders"))
    say("scoring the validation split with every n-gram model")
    ngram_log2 = kneser_ney.log2_probs(val)  # (orders, time)
    ngram_bpc = ngrams.bits_per_char(ngram_log2)
    best_order = int(np.argmin(ngram_bpc)) + 1
    timings["ngrams_s"] = round(time.time() - started, 1)

    started = time.time()
    sample_end = min(activation_chars, len(val))
    say(f"activations of every layer on the first {sample_end:,} validation characters")
    values = text_activations(client, val, 0, sample_end, progress=Progress("read"))
    sample = val[:sample_end]
    # The features of exactly what the model read: it starts fresh at the validation split, so a quote opened
    # before it is as unknown to the feature as to the model.
    tracks = features.feature_tracks(sample, language=language)
    cell_values = values.get("tanh_cell", values["hidden"])  # (time, layers, hidden)
    ranking = cells.rank_cells(cell_values, tracks)
    timings["activations_and_cells_s"] = round(time.time() - started, 1)

    windows = []
    held = cells.scored_part(sample_end)  # the characters the r's are scored on, and the windows shown from
    for name, result in ranking.items():
        if result["best"]:
            best = result["best"][0]
            a, b = cells.liveliest_window(tracks[name], WINDOW_CHARS, cells.scored_blocks(sample_end))
            windows.append({"name": name, "layer": best["layer"], "cell": best["cell"], "r": best["r_held_out"] or 0.0,
                            "start": a, "text": sample[a:b], "feature": tracks[name][a:b].tolist(),
                            "values": cell_values[a:b, best["layer"], best["cell"]].round(3).tolist()})
    all_r = {name: cells.correlations(cell_values[held].reshape(int(held.sum()), -1), track[held])
             .reshape(meta.num_layers, meta.hidden_size) for name, track in tracks.items()
             if ranking[name]["best"]}

    gate_fractions = saturation.saturation({g: values[g] for g in saturation.GATES if g in values})

    started = time.time()
    say("breaking down the LSTM's errors")
    breakdown = errors.error_breakdown(val, lstm_log2, ngram_log2, train)
    # In code a bracket inside a string or comment is text, not structure: it must not pair with a real one.
    skip = np.maximum(*features.strings_and_comments(val, language)) if language != "prose" else None
    gains = advantage.advantage(val, lstm_log2, ngram_log2[best_order - 1], skip=skip)
    timings["errors_s"] = round(time.time() - started, 1)

    results = {
        "model": {"source": client.description, "cell": meta.cell, "num_layers": meta.num_layers,
                  "hidden_size": meta.hidden_size, "vocab_size": meta.vocab_size,
                  "val_fraction": meta.val_fraction, "training_val_bpc": meta.val_bpc,
                  "created": meta.created, "config": meta.config},
        "text": {"characters": len(text), "train_characters": len(train), "validation_characters": len(val),
                 "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                 "activation_sample_characters": sample_end},
        "bits_per_char": {"lstm": round(lstm_bpc, 4),
                          "ngram": {str(n + 1): round(float(b), 4) for n, b in enumerate(ngram_bpc)},
                          "best_ngram_order": best_order, "best_ngram": round(float(ngram_bpc[best_order - 1]), 4),
                          "smoothing": "interpolated modified Kneser-Ney"},
        "cells": {"activation": "tanh(c)" if "tanh_cell" in values else "h", "ranking": ranking,
                  "held_out_r_by_cell": {name: np.where(np.isfinite(r), r.round(4), None).tolist()  # None: constant cell
                                         for name, r in all_r.items()},
                  "feature_definitions": {name: d for name, (_, d) in features.FEATURES.items()}},
        "saturation": {"thresholds": [saturation.LEFT, saturation.RIGHT],
                       "summary": saturation.summarise(gate_fractions),
                       "per_unit": {g: {side: v.round(4).tolist() for side, v in sides.items()}
                                    for g, sides in gate_fractions.items()}},
        "errors": breakdown,
        "advantage": gains,
        "language": {"language": language, "decided_by": language_from},
        "timings": timings,
    }
    if language != "prose":
        results["code"] = {"cells": {name: ranking[name]["best"][0] if ranking[name]["best"] else
                                     {"note": ranking[name].get("note", "")} for name in CODE_FEATURES},
                           "brace_by_distance": gains["closers_by_distance"].get("}", [])}

    say("drawing figures")
    pngs = {"ngrams": figures.ngram_curve(ngram_bpc.tolist(), lstm_bpc),
            "errors": figures.error_bars(breakdown), "advantage": figures.advantage_bars(gains)}
    if gate_fractions:
        pngs["saturation"] = figures.saturation_scatter(gate_fractions)
    if gains["closers_by_distance"].get("}"):
        pngs["long_range"] = figures.long_range(gains)
    if windows:
        pngs["cells"] = figures.cell_traces([{**w, "values": w["values"][:200], "feature": w["feature"][:200]}
                                             for w in windows])
    return results, pngs, {"windows": windows}


# --- the page ------------------------------------------------------------------------------------------------
def colour(value: float) -> str:
    """The paper's Figure 2 colouring: -1 red, 0 white, +1 blue."""
    v = max(-1.0, min(1.0, float(value)))
    end = (230, 60, 60) if v < 0 else (60, 110, 235)
    mixed = [round(255 + (e - 255) * abs(v)) for e in end]
    return f"rgb({mixed[0]},{mixed[1]},{mixed[2]})"


def coloured_text(text: str, values) -> str:
    spans = []
    for char, value in zip(text, values):
        shown = "↵\n" if char == "\n" else html.escape(char)
        spans.append(f'<span style="background:{colour(value)}" title="{value:+.3f}">{shown}</span>')
    return "<pre class='cells'>" + "".join(spans) + "</pre>"


def table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(row.get(c, '')))}</td>" for c in columns) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def image(pngs: dict[str, bytes], name: str, alt: str) -> str:
    if name not in pngs:
        return ""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(pngs[name]).decode()}">'


def render_html(results: dict, pngs: dict[str, bytes], extras: dict) -> str:
    model, text, bpc = results["model"], results["text"], results["bits_per_char"]
    ngram_rows = [{"n": n, "bits/char": b} for n, b in bpc["ngram"].items()]
    ngram_rows.append({"n": "LSTM", "bits/char": bpc["lstm"]})
    twenty = bpc["ngram"].get("20")
    verdict = (f"Here the LSTM scores {bpc['lstm']:.3f} bits/char against {twenty:.3f} for the 20-gram model "
               f"and {bpc['best_ngram']:.3f} for the best n-gram model (n = {bpc['best_ngram_order']})."
               if twenty is not None else f"Here the LSTM scores {bpc['lstm']:.3f} bits/char against "
               f"{bpc['best_ngram']:.3f} for the best n-gram model (n = {bpc['best_ngram_order']}).")

    cell_rows = []
    for name, result in results["cells"]["ranking"].items():
        best = result["best"]
        cell_rows.append({
            "feature": name, "meaning": results["cells"]["feature_definitions"][name],
            "best cell (layer, cell)": f"{best[0]['layer'] + 1}, {best[0]['cell']}" if best else "—",
            "held-out r": f"{best[0]['r_held_out']:+.3f}" if best and best[0]["r_held_out"] is not None else "—",
            "r where chosen": f"{best[0]['r_chosen_on']:+.3f}" if best else "—",
            "runners-up (held-out r)": ", ".join(f"{b['layer'] + 1}/{b['cell']} ({b['r_held_out']:+.2f})"
                                               for b in best[1:4] if b["r_held_out"] is not None)
            or result.get("note", "")})
    windows = "".join(f"<h3>{html.escape(w['name'])}: layer {w['layer'] + 1}, cell {w['cell']} "
                      f"(held-out r = {w['r']:+.3f})</h3>" + coloured_text(w["text"], w["values"])
                      for w in extras["windows"])

    gains = results["advantage"]
    closers = "".join(f"<h4>closing {html.escape(c)}</h4>" + table(rows, ["distance", "count", "lstm_bits",
                                                                          "ngram_bits", "gain_bits"])
                      for c, rows in gains["closers_by_distance"].items()) or \
        "<p>No closing brackets or quotes in the validation text.</p>"
    code = code_section(results)
    long_range = "" if "long_range" not in pngs else f"""<h3>Long-range: newlines and closing braces by distance</h3>
<p>Mean bits per character the LSTM saves over the best n-gram model, on newlines by the length of the line they
end and on each closing brace <code>}}</code> by its distance back to the matching <code>{{</code> (braces in
comments and strings left out), the paper's long-range comparison. The paper found the LSTM's advantage growing
with the distance, where an n-gram model's context no longer reaches the opener.</p>
{image(pngs, "long_range", "bits saved on newlines and closing braces by distance")}"""
    examples = table([{**e, "before": e["before"].replace("\n", "↵")[-30:], "char": repr(e["char"])}
                      for e in gains["largest_gains"][:10]], ["before", "char", "lstm_p", "ngram_p", "gain_bits"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>charlm report: {html.escape(model['source'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }}
pre.cells {{ font-family: ui-monospace, monospace; font-size: 13px; line-height: 1.35; white-space: pre-wrap;
  border: 1px solid #ddd; padding: 0.6em; }}
img {{ max-width: 100%; }} .note {{ color: #555; font-size: 0.9em; }}
</style></head><body>
<h1>Visualizing and understanding: {html.escape(model['source'])}</h1>
<p>{html.escape(model['cell'].upper())}, {model['num_layers']} layer(s) × {model['hidden_size']} units,
{model['vocab_size']} characters. Text: {text['characters']:,} characters (sha256 {text['sha256'][:12]}…),
split as in training: {text['train_characters']:,} train, {text['validation_characters']:,} validation
(the last {model['val_fraction']:.0%}). Activations on the first {text['activation_sample_characters']:,}
validation characters.</p>

<h2>Bits per character: the LSTM beside n-gram models (the paper's Table 2)</h2>
<p>n-gram models counted on the training split with interpolated modified Kneser-Ney smoothing; everything
scored on the validation split. {html.escape(verdict)} <span class="note">{html.escape(PAPER)}</span></p>
{image(pngs, "ngrams", "bits per character by n-gram order")}
{table(ngram_rows, ["n", "bits/char"])}

<h2>Interpretable cells</h2>
<p>Every cell of every layer ({results['cells']['activation']}) ranked by its Pearson correlation with each
feature track: chosen on alternate blocks of {cells.SELECT_BLOCK:,} characters of the activation sample, scored (held-out r) on the blocks between.</p>
{table(cell_rows, ["feature", "meaning", "best cell (layer, cell)", "held-out r", "r where chosen",
                   "runners-up (held-out r)"])}
{image(pngs, "cells", "best cell per feature against the feature")}
<p class="note">Below, each feature's best cell over held-out text, each character's background by the cell's
value (the paper's Figure 2): red −1, white 0, blue +1. Hover a character for its value.</p>
{windows}
{code}

<h2>Gate saturation (the paper's Figure 3)</h2>
<p>Each point is one gate unit: how often it is left-saturated (&lt; 0.1) and right-saturated (&gt; 0.9) on the
activation sample.</p>
{image(pngs, "saturation", "gate saturation per layer")}
{table(results['saturation']['summary'], ["layer", "gate", "units", "mean_left", "mean_right", "units_mostly_left",
                                          "units_mostly_right", "units_never_saturated"])}

<h2>Where the LSTM beats the best n-gram model (n = {bpc['best_ngram_order']})</h2>
<p>Mean gain {gains['mean_gain_bits']:+.3f} bits/char; the LSTM is better on
{100 * gains['share_of_characters_lstm_better']:.1f}% of the characters.</p>
{image(pngs, "advantage", "bits saved by the LSTM")}
<h3>By character (total bits saved)</h3>
{table([{**r, "char": repr(r["char"])} for r in gains["by_char_total"]],
       ["char", "count", "total_gain_bits", "mean_gain_bits", "lstm_bits", "ngram_bits"])}
<h3>Newlines, by distance back to the previous newline</h3>
{table(gains["newline_by_distance"], ["distance", "count", "lstm_bits", "ngram_bits", "gain_bits"])}
<h3>Closing brackets and quotes, by distance back to the opener</h3>
{closers}
{long_range}
<h3>The largest single gains</h3>
{examples}

<h2>The LSTM's errors (the paper's error analysis)</h2>
<p>An error is a character the LSTM gave probability below 0.5: {results['errors']['errors']:,} of
{results['errors']['characters']:,} validation characters ({100 * results['errors']['error_rate']:.1f}%).
Each error goes to the first category that explains it.</p>
{image(pngs, "errors", "error breakdown")}
{table(results['errors']['categories'], ["category", "definition", "errors", "share_of_errors"])}

<p class="note">Timings (s): {html.escape(json.dumps(results['timings']))}. Every number is in report.json.</p>
</body></html>
"""


def code_section(results: dict) -> str:
    """The paper's Linux cells, on a code corpus: each code feature's best cell with its held-out r."""
    if "code" not in results:
        return ""
    language = results["language"]
    rows = []
    for name, best in results["code"]["cells"].items():
        found = "layer" in best
        rows.append({"feature": name, "meaning": results["cells"]["feature_definitions"][name],
                     "best cell (layer, cell)": f"{best['layer'] + 1}, {best['cell']}" if found else "—",
                     "held-out r": f"{best['r_held_out']:+.3f}" if found and best["r_held_out"] is not None
                     else best.get("note", "—")})
    return f"""<h3>Code cells (the paper's Linux cells)</h3>
<p>The text is code: {html.escape(language['language'])} (decided by {html.escape(language['decided_by'])}); strings
and comments are lexed as {html.escape(language['language'])} has them. The best cell for each of the paper's
code features, held-out r as above.</p>
{table(rows, ["feature", "meaning", "best cell (layer, cell)", "held-out r"])}"""


def write_report(out: Path, results: dict, pngs: dict[str, bytes], extras: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    for name, data in pngs.items():
        (out / "figures" / f"{name}.png").write_bytes(data)
    (out / "report.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    page = out / "report.html"
    page.write_text(render_html(results, pngs, extras), encoding="utf-8")
    return page


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="exported model directory (newest version) or one version directory")
    parser.add_argument("--tfserving", metavar="HOST:PORT", help="read the model through TensorFlow Serving instead")
    parser.add_argument("--model-name", default="charlm", help="the model's name in TensorFlow Serving")
    parser.add_argument("--model-version", type=int,
                        help="a version of the model, under --model or in TensorFlow Serving (default: the newest)")
    parser.add_argument("--text", required=True, help="the corpus (UTF-8); split as training split it")
    parser.add_argument("--out", required=True, help="directory for report.html, report.json, figures/")
    parser.add_argument("--activation-chars", type=int, default=20_000,
                        help="validation characters to take activations on (default: 20000)")
    parser.add_argument("--max-order", type=int, default=ngrams.MAX_ORDER, help="highest n-gram order (default: 20)")
    parser.add_argument("--language", choices=LANGUAGES,
                        help="what the text is, for the string and comment lexer and the code sections (default: "
                             "the corpus' metadata JSON beside it, else a sniff of the text)")
    args = parser.parse_args(argv)
    if args.activation_chars < 100:
        parser.error(f"--activation-chars must be at least 100, got {args.activation_chars}")
    if not 1 <= args.max_order <= 40:
        parser.error(f"--max-order must be in 1..40, got {args.max_order}")
    text_path = Path(args.text)
    try:
        text = text_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        parser.error(f"--text {text_path}: cannot read it as UTF-8 text ({e})")
    started = time.time()
    try:
        client = open_client(args.model, args.tfserving, args.model_name, args.model_version)
        try:
            meta = client.metadata
            say(f"model: {client.description} ({meta.cell}, {meta.num_layers}x{meta.hidden_size})")
            language, language_from = corpus_language(text_path, text, args.language)
            say(f"language: {language} ({language_from})")
            results, pngs, extras = analyse(client, text, args.activation_chars, args.max_order,
                                            language=language, language_from=language_from)
        finally:
            client.close()
    except (ModelError, ModelInterfaceError) as e:  # a LayoutError names --model; the others arise mid-analysis
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    results["timings"]["total_s"] = round(time.time() - started, 1)
    page = write_report(Path(args.out), results, pngs, extras)
    bpc = results["bits_per_char"]
    say(f"LSTM {bpc['lstm']:.3f} bits/char; best n-gram (n={bpc['best_ngram_order']}) {bpc['best_ngram']:.3f}; "
        f"20-gram {bpc['ngram'].get(str(args.max_order), math.nan):.3f}")
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
