"""KaSA inside other libraries' training and saving: TRL's trainers (`kasa_peft.integrations.trl`, the ``trl``
extra) and the ``save_pretrained`` of an adapted transformers model (`kasa_peft.integrations.save_pretrained`).

Nothing here is imported with ``kasa_peft``; ``from kasa_peft.integrations.trl import KasaSFTTrainer`` loads TRL.
"""
