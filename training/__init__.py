"""Spectrascope training: one folder per fine-tuning method (lora, moe_lora, full), data, tasks and jobs."""
