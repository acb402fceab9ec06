"""Average the weights of several trained versions of one model (a uniform "model soup").

    python scripts/average_weights.py feq3 local/weights/feq3_soup/default \
        seisbench_feq/weights/feq3/default local/weights/feq3_pw05/default

Wortsman et al. (ICML 2022, "Model soups") average models fine-tuned from one starting point;
the average often scores above each member and is as fast as one model. The sources must share
the architecture and should share their lineage (one run's checkpoints, or runs that start from
the same weights): averaging unrelated trainings gives noise. Floating-point tensors are averaged
(batch-norm running statistics too); integer buffers come from the first source. The json keeps
the first source's records and lists the members under ``training.then``. Score the result on
validation data like any candidate (``scripts/choose_pick_mode.py``) before shipping it.
"""

from __future__ import annotations

import argparse
import torch

from seisbench_feq.models import MODELS
from seisbench_feq.training.run import save_derived_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("target", help="output prefix (PREFIX.pt.v1 + PREFIX.json.v1)")
    parser.add_argument("sources", nargs="+", help="weights prefixes to average (at least two)")
    args = parser.parse_args()
    if len(args.sources) < 2:
        parser.error("give at least two sources")
    models = [MODELS[args.model].load(source, version_str="1") for source in args.sources]
    states = [m.state_dict() for m in models]
    for source, state in zip(args.sources[1:], states[1:]):
        if state.keys() != states[0].keys() or any(state[k].shape != states[0][k].shape for k in state):
            raise SystemExit(f"{source}: not the architecture of {args.sources[0]}")
    average = {
        key: torch.stack([s[key] for s in states]).mean(0) if value.is_floating_point() else value
        for key, value in states[0].items()
    }
    model = models[0]
    model.load_state_dict(average)
    note = "uniform average of the weights of " + ", ".join(args.sources) + " (scripts/average_weights.py)"
    save_derived_weights(model, args.sources[0], args.target, note)
    print(f"wrote {args.target}.pt.v1 and {args.target}.json.v1 (average of {len(args.sources)})")


if __name__ == "__main__":
    main()
