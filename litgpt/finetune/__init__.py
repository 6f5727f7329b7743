"""Fine-tuning: `litgpt finetune_full` (every weight trains), `litgpt finetune_lora` (LoRA; QLoRA with --quantize)."""
