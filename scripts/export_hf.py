"""Export a checkpoint to a Hugging Face folder, or import one back.

    python scripts/export_hf.py checkpoints/<run> hf_export/<run>        # checkpoint -> HF folder
    python scripts/export_hf.py --import hf_export/<run> checkpoints/<name>/last.pt

The folder holds config.json (model_type llama4_text, or llama4 when the model has the vision
stub), model.safetensors and, when the run has one, the tokenizer (tokenizer.json plus
tokenizer_config.json for PreTrainedTokenizerFast). `transformers.Llama4ForCausalLM` (or
`Llama4ForConditionalGeneration`) loads it with no missing or unexpected keys.

Our parameter names are HF's, so the state dict only gains prefixes ("model." for the text
decoder; "language_model." in front of that with vision). The router noise projection is ours
alone and is dropped; an imported model therefore has router_noise off.
"""

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safetensors.torch import load_file, save_file  # noqa: E402

import config  # noqa: E402
from config import ModelArgs  # noqa: E402
from model import Llama4, build_from_state  # noqa: E402

TOP_LEVEL = {"boi_token_index", "eoi_token_index", "image_token_index"}  # Llama4Config, not text


def _set(d: dict, dotted: str, value):
    *path, last = dotted.split(".")
    for key in path:
        d = d.setdefault(key, {})
    d[last] = value


def hf_config(args: ModelArgs) -> dict:
    """config.json for Llama4ForCausalLM, or Llama4ForConditionalGeneration with vision."""
    text, vision, top = {}, {}, {}
    for f in dataclasses.fields(ModelArgs):
        name = f.metadata.get("hf")
        if name is None:
            continue
        value = getattr(args, f.name)
        if name.startswith("vision."):
            _set(vision, name.removeprefix("vision."), value)
        elif name in TOP_LEVEL:
            top[name] = value
        else:
            _set(text, name, value)
    rope = text["rope_parameters"]
    if args.rope_scaling == "none":
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": rope["rope_theta"]}
    vision["rope_parameters"]["rope_type"] = "default"
    text.update(model_type="llama4_text", architectures=["Llama4ForCausalLM"], head_dim=args.head_dim,
                bos_token_id=args.eos_id, hidden_act="silu", attention_bias=False,
                tie_word_embeddings=False, torch_dtype="float32")
    if not args.vision:
        return text
    vision.update(model_type="llama4_vision_model", vision_output_dim=args.projector_output_dim,
                  num_channels=3, hidden_act="gelu")
    text.pop("architectures")
    return {"model_type": "llama4", "architectures": ["Llama4ForConditionalGeneration"],
            "text_config": text, "vision_config": vision, "tie_word_embeddings": False,
            "torch_dtype": "float32", **top}


def hf_state_dict(model: Llama4) -> dict:
    """Our state dict under HF's names (router noise dropped)."""
    text_prefix = "language_model." if model.args.vision else ""
    out = {}
    for name, tensor in model.state_dict().items():
        if ".router_noise." in name:
            continue
        if name.startswith(("vision_model.", "multi_modal_projector.")):
            out[name] = tensor
        elif name.startswith("lm_head."):
            out[text_prefix + name] = tensor
        else:
            out[text_prefix + "model." + name] = tensor
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def export(model: Llama4, out_dir, tokenizer_path=None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config(model.args), indent=2) + "\n")
    save_file(hf_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer_path is not None and os.path.exists(tokenizer_path):
        (out / "tokenizer.json").write_bytes(Path(tokenizer_path).read_bytes())
        a = model.args
        (out / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": config.SPECIAL_TOKENS["eos_id"],
            "bos_token": config.SPECIAL_TOKENS["eos_id"], "pad_token": config.SPECIAL_TOKENS["pad_id"],
            "model_max_length": a.max_seq_len, "clean_up_tokenization_spaces": False}, indent=2) + "\n")
    return out


def args_from_hf(cfg: dict) -> ModelArgs:
    """Rebuild ModelArgs from an exported config.json (inverse of hf_config)."""
    vision = cfg.get("model_type") == "llama4"
    text = cfg["text_config"] if vision else cfg
    values = {"vision": vision, "router_noise": False}
    for f in dataclasses.fields(ModelArgs):
        name = f.metadata.get("hf")
        if name is None:
            continue
        if name.startswith("vision."):
            if not vision:
                continue
            source, name = cfg["vision_config"], name.removeprefix("vision.")
        else:
            source = cfg if name in TOP_LEVEL else text
        if name in TOP_LEVEL and not vision:
            continue
        for key in name.split("."):
            source = source.get(key) if isinstance(source, dict) else None
        if source is not None:
            values[f.name] = source
    rope_type = text.get("rope_parameters", {}).get("rope_type", "default")
    values["rope_scaling"] = "llama3" if rope_type == "llama3" else "none"
    if rope_type not in ("default", "llama3"):
        raise config.ConfigError(f"rope_type {rope_type!r} is not supported (default or llama3)")
    fields = {f.name: f.type for f in dataclasses.fields(ModelArgs)}
    values = {k: (float(v) if fields[k] is float else v) for k, v in values.items()}
    return config.from_dict(ModelArgs, values, where="config.json")


def load_hf(folder, device="cpu") -> Llama4:
    """An exported HF folder -> our model (eval mode)."""
    folder = Path(folder)
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder / name} is missing; is {folder} an exported HF folder?")
    args = args_from_hf(json.loads((folder / "config.json").read_text()))
    state = load_file(str(folder / "model.safetensors"), device=str(device))
    prefix = "language_model." if args.vision else ""
    ours = {}
    for name, tensor in state.items():
        if name.startswith(prefix + "model."):
            name = name.removeprefix(prefix + "model.")
        elif name.startswith(prefix + "lm_head."):
            name = name.removeprefix(prefix)
        ours[name] = tensor
    return build_from_state(args, ours, device).eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="checkpoint file or run folder (or, with --import, an HF folder)")
    p.add_argument("dest", help="output HF folder (or, with --import, the checkpoint file to write)")
    p.add_argument("--import", dest="do_import", action="store_true", help="HF folder -> checkpoint")
    a = p.parse_args(argv)
    import train  # checkpoint I/O lives with the trainer
    try:
        if a.do_import:
            model = load_hf(a.source)
            train.save_model_only(model, a.dest)
            tok = Path(a.source) / "tokenizer.json"
            if tok.exists():
                config.atomic_write(Path(a.dest).parent / "tokenizer.json", tok.read_bytes())
            print(f"imported {a.source} -> {a.dest}")
        else:
            ckpt_path = train.find_checkpoint(a.source)
            model, run_dir = train.load_model(ckpt_path)
            tok = Path(run_dir) / "tokenizer.json"
            export(model, a.dest, tok if tok.exists() else None)
            print(f"exported {ckpt_path} -> {a.dest}")
    except (FileNotFoundError, config.ConfigError, train.CheckpointError) as e:
        sys.exit(f"export_hf.py: error: {e}")


if __name__ == "__main__":
    main()
