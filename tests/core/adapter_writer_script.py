"""Child process for the kill tests of ``save_adapter``: ``python adapter_writer_script.py DIR MODE``.

Saves adapter "one" (alpha 8, every adapter tensor 1.0) to DIR, prints ``ready``, then:
``loop``: saves "two" (alpha 4, every tensor 2.0) and "one" over each other until killed;
``kill-at-replace:K``: saves "two" with ``os.replace`` patched to SIGKILL the process at its K-th call;
``kill-while-writing``: saves "two" and is killed inside safetensors' write, after it created its own
temporary beside the file (as safetensors >= 0.8 does).
A consistent adapter in DIR therefore has ``fill_of(alpha)`` in every adapter tensor.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn

import kasa_peft.core.io as io
from kasa_peft.core import KasaConfig, inject, kasa_layers, save_adapter

FILLS = {8.0: 1.0, 4.0: 2.0}  # alpha -> the value of every adapter tensor


def base() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))


def model(alpha: float) -> nn.Module:
    net = inject(base(), KasaConfig(r=2, alpha=alpha, target_modules=("0", "2")))
    with torch.no_grad():
        for _, layer in kasa_layers(net):
            for param in layer.adapters["default"].parameters():
                param.fill_(FILLS[alpha])
    return net


def kill_at_call(k: int) -> None:
    real, calls = os.replace, [0]

    def replace(*args, **kwargs):
        calls[0] += 1
        if calls[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    os.replace = replace


def kill_while_writing() -> None:
    def save_file(tensors, filename, metadata=None):
        Path(filename).with_name(".tmpK1lLd").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGKILL)
    io.save_file = save_file


if __name__ == "__main__":
    directory, mode = sys.argv[1], sys.argv[2]
    one, two = model(8.0), model(4.0)
    save_adapter(one, directory)
    print("ready", flush=True)
    if mode == "loop":
        while True:
            save_adapter(two, directory)
            save_adapter(one, directory)
    if mode == "kill-while-writing":
        kill_while_writing()
    else:
        kill_at_call(int(mode.split(":")[1]))
    save_adapter(two, directory)
