"""Re-initialise the P and S heads of trained weights, keeping everything else (a training stage's --init).

    python scripts/reinit_pick_heads.py feq3 seisbench_feq/weights/feq3/default local/init/feq3_heads/default

Why: a pick head whose last-layer weights are all negative can only lower its probability below
sigmoid(bias) (about 0.52 for the stage-4 weights): the student can never say "sure". The last
separable convolution of the P and S decoders and their 1-sample head get PyTorch's default
initialisation and a head bias of logit(0.01), so the heads must learn positive evidence. The
json keeps the source's records (``training``, ``history``, ``data``) so that the next
``seisbench-feq train --init`` copies them into its ``history``.
"""

from __future__ import annotations

import argparse
import math

import torch

from seisbench_feq.models import MODELS
from seisbench_feq.training.run import save_derived_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("source", help="weights prefix (PREFIX.pt.v1 + PREFIX.json.v1)")
    parser.add_argument("target", help="output prefix")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = MODELS[args.model].load(args.source, version_str="1")
    for index in (1, 2):  # decoders: 0 detection, 1 P, 2 S
        decoder = model.decoders[index]
        for module in list(decoder.convs[-1].children()) + [decoder.head]:
            module.reset_parameters()
        with torch.no_grad():
            decoder.head.bias.fill_(math.log(0.01 / 0.99))
    note = (
        "P and S decoders' last separable conv and head re-initialised (PyTorch default init, head bias "
        f"logit(0.01), seed {args.seed}) by scripts/reinit_pick_heads.py"
    )
    save_derived_weights(model, args.source, args.target, note)
    print(f"wrote {args.target}.pt.v1 and {args.target}.json.v1")


if __name__ == "__main__":
    main()
