"""`streamer convert PATH --out DIR`: turn a trained Keras model into the serving artifact."""

from __future__ import annotations

import json
import os
from pathlib import Path

MANIFEST = "manifest.json"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a trained Keras model into a streaming step model (serving artifact)",
        description="Validate a trained Keras RNN and convert it by weight transfer into the per-step "
                    "streaming model that `streamer serve` runs: DIR/step_model.json (spec), "
                    "DIR/step_model.npz (weights) and DIR/manifest.json (version, layers, state layout).",
    )
    p.add_argument("path", metavar="PATH",
                   help="a .keras or .h5 (Keras 2) model file, a `streamer train` output directory (with model.keras), "
                        "or an already converted directory (re-validated and copied)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the parity self-check against Keras on a random sequence")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON instead of a summary")
    p.set_defaults(func=run)


def run(args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off stderr
    from models.errors import ModelError
    from streamer.errors import UserError

    try:
        return _run(args)
    except ModelError as exc:
        raise UserError(str(exc)) from None


def _run(args) -> int:
    from models.convert import convert_model
    from models.serving import load_keras_model, resolve_model_path
    from models.stepmodel import StepModel
    from streamer.errors import UserError

    kind, src = resolve_model_path(args.path)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory; give a directory path")
    if (out / "model.keras").exists():
        raise UserError(f"--out {out} holds a `streamer train` output (model.keras, manifest.json); "
                        "write the serving artifact to its own directory, e.g. --out artifacts/model")
    if kind == "step":
        model = StepModel.load(src)
    else:
        model = convert_model(load_keras_model(src), verify=not args.no_verify)
        model.source["keras_file"] = str(src)
    model.save(out)
    manifest = write_manifest(model, out)
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        layers = " -> ".join(f"{l['kind']}({l.get('units', '')})".replace("()", "") for l in manifest["layers"])
        mask = "" if model.mask_value is None else f", mask_value={model.mask_value:g}"
        print(f"converted {src} -> {out}: version {model.version}, {model.feature_size} features -> "
              f"{model.output_size} outputs, state {model.state_size} floats/stream{mask}")
        print(f"layers: {layers}")
    return 0


def write_manifest(model, out: Path) -> dict:
    """DIR/manifest.json: what a deployer needs to know without loading the weights."""
    manifest = {
        "artifact": "rnn-streamer step model",
        "version": model.version,
        "files": ["step_model.json", "step_model.npz"],
        **{k: v for k, v in model.describe().items() if k != "version"},
        "source": model.source,
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST)
    return manifest
