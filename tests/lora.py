"""A LoRA adapter for tests: random non-zero B (peft initialises B to zero, which would make an
adapter that changes nothing), saved as safetensors."""
import os

import torch


def make_adapter(model_dir: str, out: str, seed: int, targets=("q_proj", "v_proj", "o_proj")) -> str:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(lm, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    peft_model.save_pretrained(out)
    assert os.path.exists(os.path.join(out, "adapter_model.safetensors"))
    return out
