"""The names of the methods `kasa-peft train --method` accepts (apart, so that checking one loads nothing)."""

LOW_RANK_METHODS = ("kasa", "lora", "pissa", "milora", "dora", "adalora", "peft-kasa", "fft")
BASELINES = ("bitfit", "adapter-h", "adapter-p", "adapter-l", "adapter-d", "series", "parallel", "prefix", "ft-top2",
             "vera", "dylora")
"""The other baselines of the KaSA paper's tables (`kasa_peft.training.baselines`)."""
METHODS = LOW_RANK_METHODS + BASELINES
