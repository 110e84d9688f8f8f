"""The names of the methods `kasa-peft train --method` accepts (apart, so that checking one loads nothing)."""

METHODS = ("kasa", "lora", "pissa", "milora", "dora", "adalora", "peft-kasa", "fft")
