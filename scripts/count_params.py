"""Parameter table of a preset, built on the meta device (the 109B and 400B presets cost nothing).

    python scripts/count_params.py --preset scout-17b-16e
    python scripts/count_params.py --preset tiny --n_experts 8     # any ModelArgs override

Rows group the parameters by module kind; "active" counts what one token uses: everything in
the text model except the routed experts it is not sent to (top_k of n_experts). The vision stub
is listed apart (it runs once per image, not per token). Only one or two layers are built (each
kind of layer is counted once and multiplied), so any --n_layers answers at once. A --vocab_size
below 264 (8 special tokens + 256 bytes) is refused, as train.py refuses it.
"""

import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import errors  # noqa: E402, F401  first: a Ctrl-C while torch imports is one line, no traceback

# isort: split

import config  # noqa: E402
from errors import run_script  # noqa: E402
from model import Llama4, count_parameters, summed_over_layers  # noqa: E402
from tokenizer import too_small  # noqa: E402

# The Llama-4-Scout-17B-16E model card prints this total; the modules sum to one embedding
# matrix less (see `explain_scout_card`).
SCOUT_CARD_TOTAL = 109_676_279_296


def kind_of(name: str) -> str:
    if name.startswith("vision_model."):
        return "vision encoder + adapter"
    if name.startswith("multi_modal_projector."):
        return "multimodal projector"
    if name.startswith("embed_tokens."):
        return "token embedding"
    if name.startswith("lm_head."):
        return "lm_head (untied)"
    for part, label in [(".self_attn.", "attention q/k/v/o"), (".experts.", "routed experts"),
                        (".shared_expert.", "shared expert"), (".router_noise.", "router noise (ours)"),
                        (".router.", "router"), ("norm", "RMSNorm weights"),
                        (".feed_forward.", "dense SwiGLU layers")]:
        if part in name:
            return label
    return "other"


def measure(model: Llama4) -> dict:
    """Parameters by module kind (kind_of), keyed ("kind", kind), and count_parameters, keyed
    ("count", key): both from one set of models (summed_over_layers)."""
    out = defaultdict(int)
    for name, p in model.named_parameters():
        out["kind", kind_of(name)] += p.numel()
    return {**out, **{("count", k): n for k, n in count_parameters(model).items()}}


def table(args: config.ModelArgs) -> tuple[list, dict]:
    """The rows (module kind, parameters), largest first, and count_parameters, of the model `args`
    describes, none of whose layers is built (model.summed_over_layers)."""
    whole = summed_over_layers(args, measure)
    rows = [(k, n) for (what, k), n in whole.items() if what == "kind" and n]
    return sorted(rows, key=lambda r: -r[1]), {k: n for (what, k), n in whole.items() if what == "count"}


def explain_scout_card(counts: dict) -> str:
    extra = SCOUT_CARD_TOTAL - counts["total"]
    same = "exactly one embedding matrix" if extra == counts["embedding"] else "not one embedding matrix"
    return (f"model card total {SCOUT_CARD_TOTAL:,} = module sum {counts['total']:,} + {extra:,}, "
            f"{same} ({counts['embedding']:,} = vocab x dim): the card appears to count the input "
            "embedding twice (once as the text embedding, once more as a tied/output copy), "
            "while the modules hold one embedding and one separate lm_head.")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    config.refuse_training_settings(config.Parser(prog="count_params.py"), argv, "which changes no parameter "
                                    "count; drop it (count_params.py takes --preset and the model settings)")
    name, (args,) = config.parse_args([config.ModelArgs], argv, prog="count_params.py",
                                      description=__doc__)
    if problem := too_small(args.vocab_size):  # (train.py refuses it too: no tokenizer has so few)
        print(f"count_params.py: error: {problem}", file=sys.stderr)
        sys.exit(2)
    rows, counts = table(args)
    moe = args.n_moe_layers  # (--moe_every past n_layers: none)
    experts = f"{args.n_experts} experts top-{args.top_k}" + (
        f" in {moe} of the layers" if moe < args.n_layers else "") if moe else "no MoE layer"
    print(f"preset {name}: dim {args.dim}, {args.n_layers} layers, {experts}, "
          f"vocab {args.vocab_size}, vision {'on' if args.vision else 'off'}")
    print(f"{'module':32s} {'parameters':>18s} {'share':>7s}")
    for kind, n in rows:
        print(f"{kind:32s} {n:18,d} {n / counts['total']:7.1%}")
    print("-" * 59)
    for key in ["total", "text", "vision", "embedding", "non_embedding", "active_per_token"]:
        print(f"{key:32s} {counts[key]:18,d}")
    if name == "scout-17b-16e" and args == config.preset(name, config.ModelArgs):
        print(explain_scout_card(counts))
    return counts


if __name__ == "__main__":
    run_script(main, "count_params.py")
