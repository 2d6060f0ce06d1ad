"""The embedded toy reasoner: its tokenizer, training recipe, positive control and CLI commands."""
