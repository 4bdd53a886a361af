"""Do per-layer sensitivities add up? Quantize layers alone and together and measure the real rate.

    BITALLOC_DATA=../shared/data python studies/interaction_check.py                      # the README's case
    python studies/interaction_check.py --model bmshj2018-hyperprior --quality 4 --layers h_s.0:2 h_s.2:2

For each layer alone, then all of them jointly, prints the estimated bpp and RD loss (the sensitivity's
measure) and the real bpp from the bytes of ``compress`` on centre crops of the Kodak images (or
scikit-image's photos without a data root). A joint rate far above what the single layers predict means the
additive cost model that FMPQ, the ILP and greedy rely on does not hold for that plan.
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from bitalloc import apply_plan, evaluate
from bitalloc.data import data_root
from bitalloc.models import load_model
from bitalloc.sensitivity import calibration_batch, model_lambda, rd_loss


def _measure(model, x, lmbda) -> dict:
    """Estimated bpp and RD loss (what the sensitivity sees) and the real bpp from the bitstreams."""
    with torch.no_grad():
        out = model(x)
    est = rd_loss(out["likelihoods"], out["x_hat"], x, lmbda)
    real = evaluate(model, {f"crop{i}": crop for i, crop in enumerate(x)}, progress=False)
    return {"est_bpp": est["bpp"], "est_rd_loss": est["loss"], "real_bpp": float(real.bpp.mean())}


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mbt2018-mean")
    p.add_argument("--quality", type=int, default=4)
    p.add_argument("--layers", nargs="+", default=["h_s.0:2", "h_s.2:2", "h_s.4:2"], help="layer:bits")
    p.add_argument("--crops", type=int, default=2)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--calibration", default="mse")
    p.add_argument("--data", default=None)
    args = p.parse_args(argv)
    model = load_model(args.model, args.quality).eval()
    modules = dict(model.named_modules())
    plan = {}
    for item in args.layers:
        name, _, bits = item.partition(":")
        if name not in modules or not bits.isdigit():
            raise SystemExit(f"--layers {item!r}: expected layer:bits with a layer of {args.model}")
        plan[name] = int(bits)
    root = data_root(args.data)
    x = calibration_batch(root / "kodak" if root else None, crop=args.crop, limit=args.crops)
    lmbda = model_lambda(model)

    def quantized(sub: dict) -> torch.nn.Module:  # a copy with only these layers fake-quantized
        return apply_plan(model, sub, keep_float=True, calibration=args.calibration).eval()

    rows = [{"quantized": "none (FP32)", **_measure(model, x, lmbda)}]
    for name, bits in plan.items():
        rows.append({"quantized": f"{name}@{bits}", **_measure(quantized({name: bits}), x, lmbda)})
    rows.append({"quantized": "all together", **_measure(quantized(plan), x, lmbda)})
    table = pd.DataFrame(rows)
    print(f"{args.model} q{args.quality}, {x.shape[0]} crops of {args.crop}^2, {args.calibration} calibration")
    print(table.to_markdown(index=False, floatfmt=".4f"))
    return table


if __name__ == "__main__":
    main()
