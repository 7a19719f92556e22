"""The PyTorch reference of bench_train in bf16: ../shared/bench/torch_reference_train.py under
torch.autocast("cpu", dtype=torch.bfloat16), the reference itself unchanged.

    .venv-torch/bin/python benchmarks/bench_train_torch_bf16.py --reference PATH [the reference's flags]

The reference is shared (not this project's to edit), has no precision option and runs its benchmark when it is
run, so this runs it as __main__ inside autocast, as PyTorch's mixed-precision recipe has it: forward and loss
under autocast (nn.LSTM, the head and the embedding pick their own dtypes; weights, gradients and Adam stay
fp32), backward outside it (a backward op runs in the dtype its forward op chose). Prints the reference's JSON
line, then one saying what autocast did: {"autocast": "bfloat16", "lstm_dtype": ..., "head_dtype": ...}.
"""
import argparse
import json
import runpy
import sys

import torch

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--reference", required=True, help="path of torch_reference_train.py")
args, reference_argv = parser.parse_known_args()

backward = torch.Tensor.backward


def backward_outside_autocast(self, *a, **kw):
    with torch.autocast("cpu", enabled=False):
        return backward(self, *a, **kw)


torch.Tensor.backward = backward_outside_autocast
sys.argv = [args.reference, *reference_argv]
with torch.autocast("cpu", dtype=torch.bfloat16):
    reference = runpy.run_path(args.reference, run_name="__main__")
    # what autocast made of the reference's model: the dtype its LSTM and head computed in
    model, x = reference["model"], reference["x"]
    with torch.no_grad():
        lstm_out = model.lstm(model.embed(x))[0]
        head_out = model.head(lstm_out)
print(json.dumps({"autocast": "bfloat16", "lstm_dtype": str(lstm_out.dtype).removeprefix("torch."),
                  "head_dtype": str(head_out.dtype).removeprefix("torch.")}), flush=True)
